//go:build unix

package main

import "syscall"

// restrictFileModes makes every file and directory keystored creates
// private to its user (0600 files, 0700 directories), Pebble's included,
// which asks for 0666 and 0755: the data holds the stored responses of
// every namespace.
func restrictFileModes() { syscall.Umask(0o077) }

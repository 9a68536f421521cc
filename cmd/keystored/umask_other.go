//go:build !unix

package main

// restrictFileModes does nothing where there is no umask; the server still
// makes the data directory private.
func restrictFileModes() {}

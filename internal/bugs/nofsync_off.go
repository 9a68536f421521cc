//go:build !bug_nofsync

package bugs

// NoFsync is off in every normal build (see doc.go).
const NoFsync = false

//go:build bug_nofsync

package bugs

// NoFsync is on: this is a deliberately broken build (see doc.go).
const NoFsync = true

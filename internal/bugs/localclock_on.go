//go:build bug_localclock

package bugs

// LocalClock is on: this is a deliberately broken build (see doc.go).
const LocalClock = true

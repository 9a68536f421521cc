//go:build !bug_localclock

package bugs

// LocalClock is off in every normal build (see doc.go).
const LocalClock = false

//go:build !bug_notoken

package bugs

// NoToken is off in every normal build (see doc.go).
const NoToken = false

//go:build bug_notoken

package bugs

// NoToken is on: this is a deliberately broken build (see doc.go).
const NoToken = true

//go:build bug_leasereads

package bugs

// LeaseReads is on: this is a deliberately broken build (see doc.go).
const LeaseReads = true

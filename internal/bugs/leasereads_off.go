//go:build !bug_leasereads

package bugs

// LeaseReads is off in every normal build (see doc.go).
const LeaseReads = false

package storage

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestUsageFollowsApplyAndReopen: each namespace's usage, moved by every
// applied batch (claims, completions, releases, takeovers, a sweep, a
// packed entry), equals a count of the records from scratch, whatever the
// batching, and a reopened store counts the same.
func TestUsageFollowsApplyAndReopen(t *testing.T) {
	ents := workload()
	for _, sizes := range [][]int{nil, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 4}, {12, 3}} {
		fs := vfs.NewMem()
		s := openStore(t, fs)
		var moved map[string]Usage
		check := func(when string) {
			t.Helper()
			moved = map[string]Usage{"ns": s.NamespaceUsage("ns"), "ns2": s.NamespaceUsage("ns2")}
			if err := s.countUsage(); err != nil {
				t.Fatal(err)
			}
			for ns, u := range moved {
				if got := s.NamespaceUsage(ns); got != u || (ns == "ns" && u.Records == 0) {
					t.Errorf("batches %v, %s: %s moved by apply to %+v; counted %+v", sizes, when, ns, u, got)
				}
			}
		}
		if sizes == nil {
			applyAll(t, s, ents[:10])
			check("half way")
			applyAll(t, s, ents[10:])
		} else {
			applyAll(t, s, ents, sizes...)
		}
		check("at the end")
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openStore(t, fs)
		if got := s.NamespaceUsage("ns"); got != moved["ns"] {
			t.Errorf("batches %v: reopened store counts %+v; want %+v", sizes, got, moved["ns"])
		}
		_ = s.Close()
	}
}

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
		s := openCounting(t, fs)
		var moved map[string]Usage
		check := func(when string) {
			t.Helper()
			moved = map[string]Usage{"ns": s.NamespaceUsage("ns"), "ns2": s.NamespaceUsage("ns2")}
			if err := s.recountUsage(); err != nil {
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
		if moved["ns"].Expired == 0 {
			t.Errorf("batches %v: the sweep's deletions were not counted as expiries: %+v", sizes, moved["ns"])
		}
		s = openCounting(t, fs)
		// Expiries are counted since open (a metric's counter, not state).
		want := moved["ns"]
		want.Expired = 0
		if got := s.NamespaceUsage("ns"); got != want {
			t.Errorf("batches %v: reopened store counts %+v; want %+v", sizes, got, want)
		}
		_ = s.Close()
	}
}

// openCounting opens a store that counts usage, closed when the test ends.
func openCounting(t *testing.T, fs vfs.FS) *Store {
	t.Helper()
	s, err := Open(Config{Dir: "db", FS: fs, CountUsage: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestUsageOffByDefault: a store not asked to count usage keeps none (and
// pays for none: no scan at Open, no deltas in apply).
func TestUsageOffByDefault(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	applyAll(t, s, workload())
	if u := s.NamespaceUsage("ns"); u != (Usage{}) {
		t.Fatalf("usage without CountUsage: %+v; want none", u)
	}
}

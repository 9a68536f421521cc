package storage

import (
	"fmt"
	"github.com/keystore-dev/keystore/internal/commandtest"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
)

func TestKeyFilterHoldsEveryKey(t *testing.T) {
	const n = 100_000
	f := newKeyFilter(n / 2) // sized for n
	for i := range n {
		f.add(recordKey("ns", fmt.Sprintf("key-%d", i)))
	}
	for i := range n {
		if !f.mayContain(recordKey("ns", fmt.Sprintf("key-%d", i))) {
			t.Fatalf("key-%d added but not held", i)
		}
	}
	fp := 0
	for i := range n {
		if f.mayContain(recordKey("ns", fmt.Sprintf("other-%d", i))) {
			fp++
		}
	}
	if rate := float64(fp) / n; rate > 0.01 {
		t.Fatalf("false positive rate %.4f at capacity; want under 1%%", rate)
	}
	if f.full() {
		t.Fatalf("full after %d keys; capacity %d", n, f.capacity)
	}
}

// waitFilter waits until s has a filter and is not building one.
func waitFilter(t *testing.T, s *Store) *keyFilter {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.applyMu.Lock()
		f, next := s.filter.Load(), s.nextFilter.Load()
		s.applyMu.Unlock()
		if f != nil && next == nil {
			return f
		}
		if time.Now().After(deadline) {
			t.Fatal("no record key filter after 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// claimsFindRecords claims each key again and fails unless every claim
// finds the record there (a filter that lost a key would let the claim
// acquire it anew, with a new token).
func claimsFindRecords(t *testing.T, s *Store, l *logBuilder, at int64, keys []string) {
	t.Helper()
	for _, k := range keys {
		res := apply1(t, s, l.cmd(at, cmdClaim(k, int64(time.Hour), int64(time.Hour))))
		if res.Outcome == statev1.Outcome_OUTCOME_ACQUIRED {
			t.Fatalf("a second claim of %s acquired it: the record was not found", k)
		}
	}
}

// filterHoldsAll fails unless f holds every record key in s.
func filterHoldsAll(t *testing.T, s *Store, f *keyFilter) int {
	t.Helper()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecord}, UpperBound: []byte{prefixRecord + 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		if !f.mayContain(it.Key()) {
			t.Fatalf("record %q missing from the filter", it.Key())
		}
		n++
	}
	return n
}

func TestFilterIsBuiltFromStoredRecords(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	l := newLog()
	var keys []string
	for i := range 200 {
		keys = append(keys, fmt.Sprintf("k%d", i))
		apply1(t, s, l.cmd(commandtest.T0+int64(i), cmdClaim(keys[i], int64(time.Hour), int64(time.Hour))))
	}
	s = reopen(t, s, fs)
	f := waitFilter(t, s)
	if n := filterHoldsAll(t, s, f); n != len(keys) {
		t.Fatalf("%d records; want %d", n, len(keys))
	}
	if !f.mayContain(recordKey("ns", "k0")) || (filters{cur: f}).absent(recordKey("ns", "k0")) {
		t.Fatal("the filter does not hold a stored key")
	}
	if !(filters{cur: f}).absent(recordKey("ns", "never-claimed")) {
		t.Fatal("the filter holds a key never claimed (it would save no lookup)")
	}
	claimsFindRecords(t, s, l, commandtest.T0+1000, keys)
}

// TestFilterKeepsKeysCreatedDuringBuilds rebuilds the filter all the time
// (a tiny capacity) while records are created: a key created after a
// build's snapshot must reach the filter being built, or the filter that
// replaces the current one would not hold it.
func TestFilterKeepsKeysCreatedDuringBuilds(t *testing.T) {
	defer func(v int64) { minFilterKeys = v }(minFilterKeys)
	minFilterKeys = 8
	s := openStore(t, vfs.NewMem())
	l := newLog()
	var keys []string
	for i := range 3000 {
		keys = append(keys, fmt.Sprintf("k%d", i))
		mustApply(t, s, []raftpb.Entry{l.cmd(commandtest.T0+int64(i), cmdClaim(keys[i], int64(time.Hour), int64(time.Hour)))}, nil)
	}
	f := waitFilter(t, s)
	if n := filterHoldsAll(t, s, f); n != len(keys) {
		t.Fatalf("%d records; want %d", n, len(keys))
	}
	claimsFindRecords(t, s, l, commandtest.T0+10_000, keys)
}

func TestFilterFollowsASnapshot(t *testing.T) {
	a, b := openStore(t, vfs.NewMem()), openStore(t, vfs.NewMem())
	la, lb := newLog(), newLog()
	var keys []string
	for i := range 50 {
		keys = append(keys, fmt.Sprintf("a%d", i))
		apply1(t, a, la.cmd(commandtest.T0+int64(i), cmdClaim(keys[i], int64(time.Hour), int64(time.Hour))))
		apply1(t, b, lb.cmd(commandtest.T0+int64(i), cmdClaim(fmt.Sprintf("b%d", i), int64(time.Hour), int64(time.Hour))))
	}
	// a is ahead of b (a follower receives only newer states).
	apply1(t, a, la.cmd(commandtest.T0+50, cmdClaim("a-last", int64(time.Hour), int64(time.Hour))))
	keys = append(keys, "a-last")
	waitFilter(t, b)
	if err := transferSnapshot(t, a, b); err != nil {
		t.Fatal(err)
	}
	f := waitFilter(t, b)
	if n := filterHoldsAll(t, b, f); n != len(keys) {
		t.Fatalf("%d records after the snapshot; want %d", n, len(keys))
	}
	claimsFindRecords(t, b, la, commandtest.T0+1000, keys)
}

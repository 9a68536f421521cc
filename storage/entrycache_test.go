package storage

import (
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
)

// TestEntryCacheMatchesDisk appends random runs of entries, some of them
// overwriting the tail with a newer term as a new leader would, and checks
// that Entries answers the same from the cache as the log on disk does
// after a reopen (which starts with an empty cache), for every range.
func TestEntryCacheMatchesDisk(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	rng := rand.New(rand.NewPCG(1, 2))
	var model []raftpb.Entry // model[i] has index i+1
	term := uint64(1)
	for round := 0; round < 200; round++ {
		at := uint64(len(model)) + 1
		if len(model) > 0 && rng.IntN(4) == 0 {
			at = uint64(rng.IntN(len(model))) + 1 // overwrite from here
			term++
		}
		n := uint64(rng.IntN(8) + 1)
		ents := logEntries(at, at+n, constTerm(term))
		mustAppend(t, s, raftpb.HardState{Term: term}, ents)
		model = append(model[:at-1], ents...)
		lo := uint64(rng.IntN(len(model))) + 1
		hi := lo + uint64(rng.IntN(len(model)-int(lo)+2))
		checkEntries(t, s, lo, hi, model[lo-1:hi-1])
	}
	checkEntries(t, s, 1, uint64(len(model))+1, model)
	s = reopen(t, s, fs)
	for lo := uint64(1); lo <= uint64(len(model)); lo += 7 {
		checkEntries(t, s, lo, uint64(len(model))+1, model[lo-1:])
	}
}

// TestEntryCacheEvictsToBudget appends more than the cache holds: the oldest
// entries come from disk, the newest from the cache, and a read spanning
// both is whole.
func TestEntryCacheEvictsToBudget(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	big := make([]byte, 1<<20)
	var model []raftpb.Entry
	for i := uint64(1); i <= 3*tailCacheBytes/(1<<20); i++ {
		big[0] = byte(i)
		e := raftpb.Entry{Index: i, Term: 1, Type: raftpb.EntryNormal, Data: append([]byte(nil), big...)}
		mustAppend(t, s, raftpb.HardState{Term: 1}, []raftpb.Entry{e})
		model = append(model, e)
	}
	s.mu.RLock()
	cached, bytes := len(s.tail.ents), s.tail.bytes
	s.mu.RUnlock()
	if bytes > tailCacheBytes || cached == 0 || cached >= len(model) {
		t.Fatalf("cache holds %d entries, %d bytes; want some, within %d bytes", cached, bytes, tailCacheBytes)
	}
	checkEntries(t, s, 1, uint64(len(model))+1, model)
	// A size limit still returns at least one entry, and stops before it
	// is exceeded.
	got, err := s.Entries(uint64(len(model)-2), uint64(len(model))+1, 1)
	if err != nil || len(got) != 1 {
		t.Fatalf("Entries with maxSize 1 = %d entries, %v; want 1", len(got), err)
	}
}

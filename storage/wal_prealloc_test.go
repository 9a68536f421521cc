package storage

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
)

// preallocSegments makes segments of 64 KiB, preallocated, with a spare
// prepared once the active segment holds 1 KiB, for the length of the test.
func preallocSegments(t *testing.T) {
	size, prealloc, after := walSegmentBytes, walPrealloc, walSpareAfter
	walSegmentBytes, walPrealloc, walSpareAfter = 64<<10, true, 1<<10
	t.Cleanup(func() { walSegmentBytes, walPrealloc, walSpareAfter = size, prealloc, after })
}

// appendUntilPreallocated appends batches of entries from next on (each
// synced) until the store's active segment is a preallocated one other than
// notSeq, and returns every entry appended. The spare is prepared by a
// goroutine, so it polls, for at most 10 s.
func appendUntilPreallocated(t *testing.T, s *Store, next, notSeq uint64) []raftpb.Entry {
	t.Helper()
	var all []raftpb.Entry
	deadline := time.Now().Add(10 * time.Second)
	for {
		if seg := s.wal.active(); seg.prealloc && seg.seq != notSeq {
			return all
		}
		if time.Now().After(deadline) {
			t.Fatalf("no preallocated segment after appending %d entries", len(all))
		}
		ents := logEntries(next, next+16, constTerm(1))
		mustAppend(t, s, raftpb.HardState{Term: 1, Commit: next + 15}, ents)
		all = append(all, ents...)
		next += 16
		time.Sleep(time.Millisecond)
	}
}

// TestWALPreallocatedSegments: the log moves into zero-filled segments once
// a spare is ready, writes them from the start, and replay reads exactly
// what was written (stopping at the zeros), across rotations and reopens.
// No spare outlives Close.
func TestWALPreallocatedSegments(t *testing.T) {
	preallocSegments(t)
	fs := vfs.NewMem()
	s := openStore(t, fs)
	first := s.wal.active()
	if first.prealloc {
		t.Fatal("the first segment after Open is preallocated; want a spare prepared only once the log grows")
	}
	ents := appendUntilPreallocated(t, s, 1, 0)
	seg := s.wal.active()
	fi, err := fs.Stat("db/raftlog/" + walName(seg.seq))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != walSegmentBytes {
		t.Errorf("preallocated segment is %d bytes; want %d", fi.Size(), walSegmentBytes)
	}
	if got := s.wal.bytes(); got < uint64(walSegmentBytes) {
		t.Errorf("the log reports %d bytes on disk; want at least the preallocated segment's %d", got, walSegmentBytes)
	}
	if seg.size >= walSegmentBytes/2 {
		t.Errorf("segment %d holds %d bytes right after the switch; want its header and a batch", seg.seq, seg.size)
	}
	// Fill it past its end: the next segment is a spare too.
	for s.wal.active().seq == seg.seq {
		next := uint64(len(ents)) + 1
		more := logEntries(next, next+64, constTerm(1))
		mustAppend(t, s, raftpb.HardState{Term: 1, Commit: next + 63}, more)
		ents = append(ents, more...)
	}
	ents = append(ents, appendUntilPreallocated(t, s, uint64(len(ents))+1, seg.seq)...)

	s = reopen(t, s, fs)
	checkBounds(t, s, 1, uint64(len(ents)))
	checkEntries(t, s, 1, uint64(len(ents))+1, ents)
	if got := s.wal.bytes(); got < 2*uint64(walSegmentBytes) {
		t.Errorf("after reopening, the log reports %d bytes on disk; want at least two preallocated segments' %d", got, 2*walSegmentBytes)
	}
	if hs, _, _ := s.InitialState(); hs.Commit != uint64(len(ents)) {
		t.Errorf("HardState.Commit = %d after reopen; want %d", hs.Commit, len(ents))
	}

	// And the log goes on after the reopen, into spares again.
	ents = append(ents, appendUntilPreallocated(t, s, uint64(len(ents))+1, s.wal.active().seq)...)
	s = reopen(t, s, fs)
	checkBounds(t, s, 1, uint64(len(ents)))
	checkEntries(t, s, 1, uint64(len(ents))+1, ents)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	names, err := fs.List("db/raftlog")
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, walSpareName) {
		t.Errorf("%s left after Close: %v", walSpareName, names)
	}
}

// TestWALCrashInPreallocatedSegment: power loss while a preallocated
// segment is being written keeps every synced entry, and whatever part of
// the unsynced ones survived is a gap-free continuation of them.
func TestWALCrashInPreallocatedSegment(t *testing.T) {
	preallocSegments(t)
	for seed := int64(1); seed <= 20; seed++ {
		fs := vfs.NewCrashableMem()
		s := openStore(t, fs)
		synced := appendUntilPreallocated(t, s, 1, 0)
		next := uint64(len(synced)) + 1
		unsynced := logEntries(next, next+200, constTerm(1))
		for i := 0; i < len(unsynced); i += 20 {
			if err := s.Append(raftpb.HardState{}, unsynced[i:i+20], false); err != nil {
				t.Fatal(err)
			}
		}
		c := openStore(t, fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(uint64(seed), 0))}))
		last, err := c.LastIndex()
		if err != nil {
			t.Fatal(err)
		}
		if last < uint64(len(synced)) || last > uint64(len(synced)+len(unsynced)) {
			t.Fatalf("seed %d: LastIndex() after crash = %d; want %d..%d", seed, last, len(synced), len(synced)+len(unsynced))
		}
		all := append(append([]raftpb.Entry(nil), synced...), unsynced...)
		checkEntries(t, c, 1, last+1, all[:last])
		_ = s.Close()
		_ = c.Close()
	}
}

// TestWALLeftoverSpareRemoved: a spare that a crash left half written is
// removed by Open and never read as a segment.
func TestWALLeftoverSpareRemoved(t *testing.T) {
	preallocSegments(t)
	fs := vfs.NewMem()
	s := openStore(t, fs)
	ents := logEntries(1, 11, stepTerms)
	mustAppend(t, s, raftpb.HardState{Term: 3, Commit: 10}, ents)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A "spare" holding well-formed records: entries 11-20 of another term.
	f, err := fs.Create("db/raftlog/"+walSpareName, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for _, e := range logEntries(11, 21, constTerm(9)) {
		b, _ := e.Marshal()
		buf = appendRecord(buf, walEntry, b)
	}
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()

	s = openStore(t, fs)
	checkBounds(t, s, 1, 10)
	checkEntries(t, s, 1, 11, ents)
	if _, err := fs.Stat("db/raftlog/" + walSpareName); err == nil {
		t.Errorf("%s still there after Open", walSpareName)
	}
}

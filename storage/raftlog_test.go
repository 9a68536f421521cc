package storage

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/keystore-dev/keystore/internal/commandtest"
	"math"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// openStore opens a store in the directory "db" of fs and closes it when the
// test ends (Close is idempotent, so tests may close it earlier).
func openStore(t *testing.T, fs vfs.FS) *Store {
	t.Helper()
	s, err := Open(Config{Dir: "db", FS: fs})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// reopen closes s and opens the store again on the same filesystem.
func reopen(t *testing.T, s *Store, fs vfs.FS) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return openStore(t, fs)
}

// tickData is the data of a log entry that only advances log time. All
// indexes below 128 give data of the same size.
func tickData(i uint64) []byte {
	return mustMarshal(&statev1.Entry{RequestId: i, Time: commandtest.T0 + int64(i)})
}

// termsOf returns entries lo..hi-1 with Terms given by term(i).
func logEntries(lo, hi uint64, term func(uint64) uint64) []raftpb.Entry {
	var ents []raftpb.Entry
	for i := lo; i < hi; i++ {
		ents = append(ents, raftpb.Entry{Index: i, Term: term(i), Type: raftpb.EntryNormal, Data: tickData(i)})
	}
	return ents
}

// stepTerms gives entries 1-3 term 1, 4-7 term 2, 8 and after term 3.
func stepTerms(i uint64) uint64 {
	switch {
	case i <= 3:
		return 1
	case i <= 7:
		return 2
	default:
		return 3
	}
}

func constTerm(term uint64) func(uint64) uint64 { return func(uint64) uint64 { return term } }

func mustAppend(t *testing.T, s *Store, hs raftpb.HardState, ents []raftpb.Entry) {
	t.Helper()
	if err := s.Append(hs, ents, true); err != nil {
		t.Fatalf("Append(%v, %d entries): %v", hs, len(ents), err)
	}
}

func mustApply(t *testing.T, s *Store, ents []raftpb.Entry, cs *raftpb.ConfState) []*statev1.Result {
	t.Helper()
	// As raft does: an entry is in the log before it is applied.
	if last, _ := s.LastIndex(); len(ents) > 0 && ents[len(ents)-1].Index > last {
		var missing []raftpb.Entry
		for _, e := range ents {
			if e.Index > last {
				missing = append(missing, e)
			}
		}
		if err := s.Append(raftpb.HardState{}, missing, true); err != nil {
			t.Fatalf("Append before Apply: %v", err)
		}
	}
	res, err := s.Apply(ents, cs)
	if err != nil {
		t.Fatalf("Apply(%d entries): %v", len(ents), err)
	}
	return res
}

// checkBounds checks FirstIndex and LastIndex.
func checkBounds(t *testing.T, s *Store, first, last uint64) {
	t.Helper()
	if got, err := s.FirstIndex(); got != first || err != nil {
		t.Errorf("FirstIndex() = %d, %v; want %d, nil", got, err, first)
	}
	if got, err := s.LastIndex(); got != last || err != nil {
		t.Errorf("LastIndex() = %d, %v; want %d, nil", got, err, last)
	}
}

// checkTerm checks Term(i): want is the term, or wantErr the error.
func checkTerm(t *testing.T, s *Store, i, want uint64, wantErr error) {
	t.Helper()
	got, err := s.Term(i)
	if wantErr != nil {
		if !errors.Is(err, wantErr) {
			t.Errorf("Term(%d) = %d, %v; want error %v", i, got, err, wantErr)
		}
		return
	}
	if got != want || err != nil {
		t.Errorf("Term(%d) = %d, %v; want %d, nil", i, got, err, want)
	}
}

// entryEqual reports whether two entries are the same.
func entryEqual(a, b raftpb.Entry) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type && bytes.Equal(a.Data, b.Data)
}

// checkEntries checks that Entries(lo, hi, max) returns exactly want.
func checkEntries(t *testing.T, s *Store, lo, hi uint64, want []raftpb.Entry) {
	t.Helper()
	got, err := s.Entries(lo, hi, math.MaxUint64)
	if err != nil {
		t.Fatalf("Entries(%d, %d) error %v; want %d entries", lo, hi, err, len(want))
	}
	if len(got) != len(want) {
		t.Fatalf("Entries(%d, %d) returned %d entries; want %d", lo, hi, len(got), len(want))
	}
	for i := range want {
		if !entryEqual(got[i], want[i]) {
			t.Errorf("Entries(%d, %d)[%d] = %+v; want %+v", lo, hi, i, got[i], want[i])
		}
	}
}

func TestFreshStore(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	checkBounds(t, s, 1, 0)
	checkTerm(t, s, 0, 0, nil)
	checkTerm(t, s, 1, 0, raft.ErrUnavailable)
	hs, cs, err := s.InitialState()
	if err != nil || !raft.IsEmptyHardState(hs) || len(cs.Voters) != 0 {
		t.Errorf("InitialState() = %v, %v, %v; want empty, empty, nil", hs, cs, err)
	}
	if got, err := s.Entries(1, 2, math.MaxUint64); !errors.Is(err, raft.ErrUnavailable) {
		t.Errorf("Entries(1, 2) = %v, %v; want ErrUnavailable", got, err)
	}
	if _, err := s.Snapshot(); !errors.Is(err, raft.ErrSnapshotTemporarilyUnavailable) {
		t.Errorf("Snapshot() error = %v; want ErrSnapshotTemporarilyUnavailable", err)
	}
	if got := s.AppliedIndex(); got != 0 {
		t.Errorf("AppliedIndex() = %d; want 0", got)
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := Open(Config{FS: vfs.NewMem()}); err == nil {
		t.Errorf("Open without Dir: error nil; want an error")
	}
}

func TestEntries(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	all := logEntries(1, 11, stepTerms)
	mustAppend(t, s, raftpb.HardState{Term: 3, Commit: 10}, all)
	checkBounds(t, s, 1, 10)
	size := uint64(all[0].Size())
	for _, e := range all {
		if uint64(e.Size()) != size {
			t.Fatalf("entry %d has size %d; the test needs equal sizes (%d)", e.Index, e.Size(), size)
		}
	}
	tests := []struct {
		name        string
		lo, hi, max uint64
		want        []raftpb.Entry
		wantErr     error
	}{
		{"all", 1, 11, math.MaxUint64, all, nil},
		{"middle", 3, 6, math.MaxUint64, all[2:5], nil},
		{"last", 10, 11, math.MaxUint64, all[9:], nil},
		{"empty range", 5, 5, math.MaxUint64, nil, nil},
		{"max 0 gives one entry", 2, 11, 0, all[1:2], nil},
		{"max below one entry gives one entry", 2, 11, size - 1, all[1:2], nil},
		{"max one entry", 2, 11, size, all[1:2], nil},
		{"max just below two entries", 2, 11, 2*size - 1, all[1:2], nil},
		{"max two entries", 2, 11, 2 * size, all[1:3], nil},
		{"max three and a half entries", 2, 11, 3*size + size/2, all[1:4], nil},
		{"max larger than range", 2, 4, 100 * size, all[1:3], nil},
		{"below first", 0, 5, math.MaxUint64, nil, raft.ErrCompacted},
		{"past last", 5, 12, math.MaxUint64, nil, raft.ErrUnavailable},
		{"starting past last", 11, 12, math.MaxUint64, nil, raft.ErrUnavailable},
		{"lo above hi", 6, 5, math.MaxUint64, nil, raft.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Entries(tt.lo, tt.hi, tt.max)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Entries(%d, %d, %d) = %d entries, %v; want %v", tt.lo, tt.hi, tt.max, len(got), err, tt.wantErr)
				}
				return
			}
			if err != nil || len(got) != len(tt.want) {
				t.Fatalf("Entries(%d, %d, %d) = %d entries, %v; want %d entries", tt.lo, tt.hi, tt.max, len(got), err, len(tt.want))
			}
			for i := range got {
				if !entryEqual(got[i], tt.want[i]) {
					t.Errorf("entry %d = %+v; want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestTerm(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	mustAppend(t, s, raftpb.HardState{}, logEntries(1, 11, stepTerms))
	for i := uint64(0); i <= 10; i++ {
		want := stepTerms(i)
		if i == 0 {
			want = 0
		}
		checkTerm(t, s, i, want, nil)
	}
	checkTerm(t, s, 11, 0, raft.ErrUnavailable)
	checkTerm(t, s, math.MaxUint64, 0, raft.ErrUnavailable)
}

func TestAppendOverwritesConflictingTail(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	mustAppend(t, s, raftpb.HardState{Term: 1}, logEntries(1, 11, constTerm(1)))
	// A new leader at term 2 overwrites from 6 and has only 6 and 7.
	repl := logEntries(6, 8, constTerm(2))
	repl[0].Data, repl[1].Data = []byte("new-6"), []byte("new-7")
	mustAppend(t, s, raftpb.HardState{Term: 2}, repl)
	check := func(t *testing.T, s *Store) {
		t.Helper()
		checkBounds(t, s, 1, 7)
		checkTerm(t, s, 5, 1, nil)
		checkTerm(t, s, 6, 2, nil)
		checkTerm(t, s, 7, 2, nil)
		checkTerm(t, s, 8, 0, raft.ErrUnavailable)
		checkEntries(t, s, 4, 8, append(logEntries(4, 6, constTerm(1)), repl...))
		if got, err := s.Entries(6, 9, math.MaxUint64); !errors.Is(err, raft.ErrUnavailable) {
			t.Errorf("Entries(6, 9) = %d entries, %v; want ErrUnavailable", len(got), err)
		}
	}
	check(t, s)
	s = reopen(t, s, fs)
	check(t, s) // the old tail is gone from disk too
	// The log goes on from 8 at term 2.
	mustAppend(t, s, raftpb.HardState{}, logEntries(8, 9, constTerm(2)))
	checkBounds(t, s, 1, 8)
	checkTerm(t, s, 8, 2, nil)
}

func TestAppendOverwriteKeepsLongerNewTail(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	mustAppend(t, s, raftpb.HardState{}, logEntries(1, 6, constTerm(1)))
	mustAppend(t, s, raftpb.HardState{}, logEntries(3, 9, constTerm(4)))
	checkBounds(t, s, 1, 8)
	for i, want := range []uint64{0, 1, 1, 4, 4, 4, 4, 4, 4} {
		checkTerm(t, s, uint64(i), want, nil)
	}
	checkEntries(t, s, 1, 9, append(logEntries(1, 3, constTerm(1)), logEntries(3, 9, constTerm(4))...))
}

func TestAppendRejectsGap(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	mustAppend(t, s, raftpb.HardState{}, logEntries(1, 4, constTerm(1)))
	if err := s.Append(raftpb.HardState{Term: 9, Commit: 5}, logEntries(5, 6, constTerm(1)), true); err == nil {
		t.Fatalf("Append(entry 5 after last 3) error nil; want a gap error")
	}
	checkBounds(t, s, 1, 3)
	if hs, _, _ := s.InitialState(); hs.Term != 0 {
		t.Errorf("HardState after a refused Append = %v; want unchanged (empty)", hs)
	}
}

func TestHardStatePersisted(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	want := raftpb.HardState{Term: 3, Vote: 2, Commit: 5}
	mustAppend(t, s, want, logEntries(1, 6, constTerm(3)))
	// An empty HardState leaves the stored one alone.
	mustAppend(t, s, raftpb.HardState{}, logEntries(6, 8, constTerm(3)))
	check := func(s *Store) {
		t.Helper()
		if hs, _, err := s.InitialState(); err != nil || !reflect.DeepEqual(hs, want) {
			t.Errorf("InitialState() HardState = %v, %v; want %v", hs, err, want)
		}
	}
	check(s)
	check(reopen(t, s, fs))
}

func TestHardStateOnlyAppend(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	want := raftpb.HardState{Term: 1, Vote: 1}
	mustAppend(t, s, want, nil)
	s = reopen(t, s, fs)
	if hs, _, _ := s.InitialState(); !reflect.DeepEqual(hs, want) {
		t.Errorf("InitialState() HardState = %v; want %v", hs, want)
	}
	checkBounds(t, s, 1, 0)
}

func TestCompact(t *testing.T) {
	tests := []struct {
		name     string
		index    uint64
		wantTerm uint64
	}{
		{"inside a term", 5, 2},
		{"last of a term", 7, 2},
		{"first entry", 1, 1},
		{"whole log", 10, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := vfs.NewMem()
			s := openStore(t, fs)
			all := logEntries(1, 11, stepTerms)
			mustAppend(t, s, raftpb.HardState{Term: 3, Commit: 10}, all)
			mustApply(t, s, all, nil)
			if err := s.Compact(tt.index); err != nil {
				t.Fatalf("Compact(%d): %v", tt.index, err)
			}
			check := func(t *testing.T, s *Store) {
				t.Helper()
				i := tt.index
				checkBounds(t, s, i+1, 10)
				checkTerm(t, s, i, tt.wantTerm, nil)
				checkTerm(t, s, i-1, 0, raft.ErrCompacted)
				for j := i + 1; j <= 10; j++ {
					checkTerm(t, s, j, stepTerms(j), nil)
				}
				if got, err := s.Entries(i, 11, math.MaxUint64); !errors.Is(err, raft.ErrCompacted) {
					t.Errorf("Entries(%d, 11) = %d entries, %v; want ErrCompacted", i, len(got), err)
				}
				if i < 10 {
					checkEntries(t, s, i+1, 11, all[i:])
				}
			}
			check(t, s)
			if err := s.Compact(tt.index); !errors.Is(err, raft.ErrCompacted) {
				t.Errorf("Compact(%d) again = %v; want ErrCompacted", tt.index, err)
			}
			s = reopen(t, s, fs)
			check(t, s)
			// The log goes on after the compaction.
			mustAppend(t, s, raftpb.HardState{}, logEntries(11, 12, constTerm(3)))
			checkBounds(t, s, tt.index+1, 11)
			checkTerm(t, s, 11, 3, nil)
		})
	}
}

func TestCompactTwice(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	all := logEntries(1, 11, stepTerms)
	mustAppend(t, s, raftpb.HardState{}, all)
	mustApply(t, s, all, nil)
	for _, i := range []uint64{2, 6, 9} {
		if err := s.Compact(i); err != nil {
			t.Fatalf("Compact(%d): %v", i, err)
		}
		checkBounds(t, s, i+1, 10)
		checkTerm(t, s, i, stepTerms(i), nil)
		checkEntries(t, s, i+1, 11, all[i:])
	}
}

// TestAppendSkipsCompactedEntries appends entries that overlap the
// compacted prefix (as raft may after a snapshot): those at or below the base
// are ignored and the rest appended.
func TestAppendSkipsCompactedEntries(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	all := logEntries(1, 13, stepTerms)
	mustAppend(t, s, raftpb.HardState{}, all[:10])
	mustApply(t, s, all[:10], nil)
	if err := s.Compact(5); err != nil {
		t.Fatalf("Compact(5): %v", err)
	}
	mustAppend(t, s, raftpb.HardState{}, all[3:12])
	check := func(s *Store) {
		t.Helper()
		checkBounds(t, s, 6, 12)
		checkTerm(t, s, 5, 2, nil)
		checkTerm(t, s, 4, 0, raft.ErrCompacted)
		checkEntries(t, s, 6, 13, all[5:12])
	}
	check(s)
	check(reopen(t, s, fs))
}

func TestCompactBeyondAppliedOrLast(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	all := logEntries(1, 11, stepTerms)
	mustAppend(t, s, raftpb.HardState{}, all)
	mustApply(t, s, all[:4], nil)
	for _, i := range []uint64{5, 10, 11} {
		if err := s.Compact(i); err == nil || errors.Is(err, raft.ErrCompacted) {
			t.Errorf("Compact(%d) with applied 4, last 10 = %v; want a non-ErrCompacted error", i, err)
		}
	}
	checkBounds(t, s, 1, 10)
	if err := s.Compact(0); !errors.Is(err, raft.ErrCompacted) {
		t.Errorf("Compact(0) = %v; want ErrCompacted", err)
	}
	if err := s.Compact(4); err != nil {
		t.Errorf("Compact(4) with applied 4 = %v; want nil", err)
	}
	checkBounds(t, s, 5, 10)
}

func TestReopenRestoresLog(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	hs := raftpb.HardState{Term: 3, Vote: 1, Commit: 9}
	all := logEntries(1, 11, stepTerms)
	mustAppend(t, s, hs, all)
	s = reopen(t, s, fs)
	checkBounds(t, s, 1, 10)
	for i := uint64(1); i <= 10; i++ {
		checkTerm(t, s, i, stepTerms(i), nil)
	}
	checkEntries(t, s, 1, 11, all)
	if got, _, _ := s.InitialState(); !reflect.DeepEqual(got, hs) {
		t.Errorf("InitialState() HardState = %v; want %v", got, hs)
	}
}

// claimEntries returns normal entries lo..hi-1 at term, each a Claim on its
// own key of namespace "ns", proposed at commandtest.T0 + index seconds.
func claimEntries(t *testing.T, lo, hi, term uint64) []raftpb.Entry {
	t.Helper()
	var ents []raftpb.Entry
	for i := lo; i < hi; i++ {
		cmd := &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
			Namespace: "ns", Key: fmt.Sprintf("key-%d", i), Fingerprint: []byte("fp"),
			Lease: commandtest.Lease, Retention: commandtest.Retention, Owner: "owner",
		}}}
		ents = append(ents, raftpb.Entry{Index: i, Term: term, Type: raftpb.EntryNormal,
			Data: envelope(i, commandtest.T0+int64(i)*1e9, cmd)})
	}
	return ents
}

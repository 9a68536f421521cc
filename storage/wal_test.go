package storage

import (
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// smallSegments makes every append past 1 KiB start a new segment, for the
// length of the test. Segments are not preallocated: these tests damage
// and extend segments at their ends.
func smallSegments(t *testing.T) {
	oldSize, oldPrealloc := walSegmentBytes, walPrealloc
	walSegmentBytes, walPrealloc = 1<<10, false
	t.Cleanup(func() { walSegmentBytes, walPrealloc = oldSize, oldPrealloc })
}

func walSegments(t *testing.T, fs vfs.FS) []uint64 {
	t.Helper()
	seqs, err := listWAL(fs, "db/raftlog")
	if err != nil {
		t.Fatalf("listWAL: %v", err)
	}
	return seqs
}

// appendTo writes raw bytes at the end of segment seq, as a crash in the
// middle of a write would leave them.
func appendTo(t *testing.T, fs vfs.FS, seq uint64, b []byte) {
	t.Helper()
	name := "db/raftlog/" + walName(seq)
	f, err := fs.OpenReadWrite(name, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, fi.Size()); err != nil {
		t.Fatal(err)
	}
}

// TestWALTornTail: a record cut short by a crash ends the log; the entries
// before it survive, and the log goes on after the restart.
func TestWALTornTail(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	ents := logEntries(1, 11, stepTerms)
	hs := raftpb.HardState{Term: 3, Vote: 1, Commit: 10}
	mustAppend(t, s, hs, ents)
	crc := s.wal.crc
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	seqs := walSegments(t, fs)
	// Half of an entry record: its header promises more than follows.
	torn, _ := appendChained(nil, crc, walEntry, make([]byte, 40))
	appendTo(t, fs, seqs[len(seqs)-1], torn[:20])

	s = openStore(t, fs)
	checkBounds(t, s, 1, 10)
	checkEntries(t, s, 1, 11, ents)
	if got, _, _ := s.InitialState(); !reflect.DeepEqual(got, hs) {
		t.Errorf("HardState = %v; want %v", got, hs)
	}
	more := logEntries(11, 14, stepTerms)
	mustAppend(t, s, raftpb.HardState{}, more)
	s = reopen(t, s, fs)
	checkBounds(t, s, 1, 13)
	checkEntries(t, s, 1, 14, append(append([]raftpb.Entry(nil), ents...), more...))
}

// TestWALBadChecksumInOlderSegment: a damaged record in a segment older
// than the newest makes Open fail: only the newest can end in a torn write
// (see wal_damage_test.go for the newest).
func TestWALBadChecksumInOlderSegment(t *testing.T) {
	smallSegments(t)
	fs := vfs.NewMem()
	s := openStore(t, fs)
	for i := uint64(1); i <= 200; i += 4 {
		mustAppend(t, s, raftpb.HardState{}, logEntries(i, i+4, constTerm(1)))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	seqs := walSegments(t, fs)
	if len(seqs) < 3 {
		t.Fatalf("%d segments; want several (segment size 1 KiB)", len(seqs))
	}
	// Flip a byte in the last entry record of the first segment that
	// holds entries.
	name := "db/raftlog/" + walName(seqs[0])
	f, err := fs.OpenReadWrite(name, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, fi.Size()-3); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, fi.Size()-3); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	if s, err := Open(Config{Dir: "db", FS: fs}); !errors.Is(err, ErrCorrupt) {
		if err == nil {
			_ = s.Close()
		}
		t.Fatalf("Open with a damaged entry mid-log = %v; want ErrCorrupt", err)
	}
}

// appendAndApply40 opens a store on fs and appends and applies 40 claim
// entries of term 2, five per Append.
func appendAndApply40(t *testing.T, fs vfs.FS) (*Store, []raftpb.Entry) {
	t.Helper()
	s := openStore(t, fs)
	ents := claimEntries(t, 1, 41, 2)
	for i := 0; i < len(ents); i += 5 {
		mustAppend(t, s, raftpb.HardState{Term: 2, Commit: uint64(i + 5)}, ents[i:i+5])
	}
	mustApply(t, s, ents, nil)
	return s, ents
}

// TestWALSegmentsDeletedByCompaction: compaction deletes the segments that
// hold only compacted entries, and the log reopens from what is left.
func TestWALSegmentsDeletedByCompaction(t *testing.T) {
	smallSegments(t)
	fs := vfs.NewMem()
	s, ents := appendAndApply40(t, fs)
	before := len(walSegments(t, fs))
	if err := s.Compact(30); err != nil {
		t.Fatalf("Compact(30): %v", err)
	}
	after := len(walSegments(t, fs))
	if after >= before {
		t.Errorf("segments after Compact(30) = %d; want fewer than %d", after, before)
	}
	s = reopen(t, s, fs)
	checkBounds(t, s, 31, 40)
	checkTerm(t, s, 30, 2, nil)
	checkEntries(t, s, 31, 41, ents[30:])
	if got := s.DiskUsage().RaftLog; got == 0 {
		t.Error("DiskUsage().RaftLog = 0; want the segments' size")
	}
}

// TestWALOverwriteAcrossSegments: a new leader's entries replace an old
// tail written to an earlier segment, and replay keeps the new ones.
func TestWALOverwriteAcrossSegments(t *testing.T) {
	smallSegments(t)
	fs := vfs.NewMem()
	s := openStore(t, fs)
	old := logEntries(1, 31, constTerm(1))
	for i := 0; i < len(old); i += 3 {
		mustAppend(t, s, raftpb.HardState{Term: 1}, old[i:i+3])
	}
	repl := logEntries(12, 16, constTerm(2))
	mustAppend(t, s, raftpb.HardState{Term: 2}, repl)
	s = reopen(t, s, fs)
	checkBounds(t, s, 1, 15)
	checkEntries(t, s, 1, 16, append(append([]raftpb.Entry(nil), old[:11]...), repl...))
	checkTerm(t, s, 16, 0, raft.ErrUnavailable)
}

// TestWALCrashAfterCompaction: power loss right after a compaction that
// deleted segments leaves a log that opens, with every entry not compacted.
func TestWALCrashAfterCompaction(t *testing.T) {
	smallSegments(t)
	fs := vfs.NewCrashableMem()
	s, ents := appendAndApply40(t, fs)
	if err := s.Compact(30); err != nil {
		t.Fatalf("Compact(30): %v", err)
	}
	c := openStore(t, fs.CrashClone(vfs.CrashCloneCfg{}))
	first, _ := c.FirstIndex()
	if first > 31 {
		t.Fatalf("FirstIndex() after crash = %d; want at most 31", first)
	}
	checkEntries(t, c, 31, 41, ents[30:])
	if got := c.AppliedIndex(); got < first-1 {
		t.Errorf("AppliedIndex() after crash = %d; the log starts at %d: entries lost", got, first)
	}
}

// TestWALStateAheadOfLogIsReconciled: a crash between a snapshot's state
// and the log's reset leaves the log behind the state, and the snapshot
// intent that the log recorded first; Open resets the log to start after
// the snapshot. A state ahead of a log without that intent means the log
// lost synced entries: Open fails. Applied entries past a commit index that
// did not survive move the commit index up.
func TestWALStateAheadOfLogIsReconciled(t *testing.T) {
	t.Run("crash before the reset", func(t *testing.T) {
		_, md, data := snapshotSource(t)
		mem := vfs.NewMem()
		var crashed atomic.Bool
		fs := errorfs.Wrap(mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
			// The reset starts a new segment: the crash comes first.
			if crashed.Load() && op.Kind == errorfs.OpCreate && strings.HasSuffix(op.Path, ".wal") {
				return errors.New("injected crash")
			}
			return nil
		}))
		b := openStore(t, fs)
		mustAppend(t, b, raftpb.HardState{Term: 1, Commit: 3}, logEntries(1, 4, constTerm(1)))
		crashed.Store(true)
		if err := install(b, md, data); err == nil {
			t.Fatal("ApplySnapshot succeeded; want it to fail at the log's reset")
		}
		_ = b.Close()
		var logs syncBuffer
		b, err := Open(Config{Dir: "db", FS: mem, Logger: logs.logger()})
		if err != nil {
			t.Fatalf("Open after a crash between the state and the log's reset: %v", err)
		}
		t.Cleanup(func() { _ = b.Close() })
		check := func(b *Store) {
			t.Helper()
			checkBounds(t, b, 11, 10)
			checkTerm(t, b, 10, 2, nil)
			if hs, _, _ := b.InitialState(); hs.Commit < 10 {
				t.Errorf("HardState commit = %d; want at least the snapshot's 10", hs.Commit)
			}
		}
		check(b)
		if !strings.Contains(logs.String(), "finishing a snapshot install") {
			t.Errorf("no warning about the interrupted snapshot install; logs:\n%s", logs.String())
		}
		check(reopen(t, b, mem))
	})
	// The log as it was before a snapshot at 10 (term 2) was installed:
	// own entries, and a snapshot intent at intent unless zero.
	for _, tc := range []struct {
		name   string
		own    []raftpb.Entry
		intent walMark
		ok     bool
	}{
		{"log behind, intent", logEntries(1, 4, constTerm(1)), walMark{10, 2}, true},
		{"log behind, no intent", logEntries(1, 4, constTerm(1)), walMark{}, false},
		{"log behind, intent at another index", logEntries(1, 4, constTerm(1)), walMark{9, 2}, false},
		{"log behind, intent of another term", logEntries(1, 4, constTerm(1)), walMark{10, 1}, false},
		{"other term at applied, intent", logEntries(1, 13, constTerm(1)), walMark{10, 2}, true},
		{"other term at applied, no intent", logEntries(1, 13, constTerm(1)), walMark{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := stateAheadOfLog(t, tc.own, tc.intent)
			b, err := Open(Config{Dir: "db", FS: fs})
			if !tc.ok {
				if err == nil {
					_ = b.Close()
					t.Fatal("Open of a state ahead of its log with no snapshot intent for it succeeded; want ErrCorrupt")
				}
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "db/raftlog") ||
					!strings.Contains(err.Error(), "no record in the log says that a snapshot at 10") {
					t.Fatalf("Open = %v; want ErrCorrupt naming the log and the missing snapshot record", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			t.Cleanup(func() { _ = b.Close() })
			checkBounds(t, b, 11, 10)
			checkTerm(t, b, 10, 2, nil)
		})
	}
	t.Run("commit", func(t *testing.T) {
		fs := vfs.NewMem()
		s := openStore(t, fs)
		ents := claimEntries(t, 1, 6, 1)
		mustAppend(t, s, raftpb.HardState{Term: 1, Commit: 2}, ents)
		mustApply(t, s, ents, nil)
		s = reopen(t, s, fs)
		if hs, _, _ := s.InitialState(); hs.Commit != 5 {
			t.Errorf("HardState commit = %d; want 5 (applied)", hs.Commit)
		}
	})
}

// stateAheadOfLog returns a filesystem with a store whose state is a
// snapshot at 10 (term 2) and whose log is own, followed by a snapshot
// intent at intent unless it is zero: as the reset of the log after the
// snapshot never happened.
func stateAheadOfLog(t *testing.T, own []raftpb.Entry, intent walMark) vfs.FS {
	t.Helper()
	_, md, data := snapshotSource(t)
	fs := vfs.NewMem()
	b := openStore(t, fs)
	if err := install(b, md, data); err != nil {
		t.Fatalf("ApplySnapshot: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, seq := range walSegments(t, fs) {
		if err := fs.Remove("db/raftlog/" + walName(seq)); err != nil {
			t.Fatal(err)
		}
	}
	w, _, err := openWAL(fs, "db/raftlog", walState{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.append(own, &raftpb.HardState{Term: 1, Commit: 3}, true); err != nil {
		t.Fatal(err)
	}
	if intent.index != 0 {
		if err := w.markSnapshot(intent.index, intent.term); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	return fs
}

// TestWALMigratesLogFromPebble: a store written when the log lived in
// Pebble opens with its log, HardState and base moved to the WAL, and the
// Pebble keys gone; a migration cut short by a crash (a partial WAL in the
// temporary directory) is started over.
func TestWALMigratesLogFromPebble(t *testing.T) {
	for _, name := range []string{"clean", "after a crash midway"} {
		t.Run(name, func(t *testing.T) {
			fs := vfs.NewMem()
			db, err := pebble.Open("db", &pebble.Options{FS: fs, Logger: pebbleLogger{l: slog.New(slog.DiscardHandler)}})
			if err != nil {
				t.Fatal(err)
			}
			ents := logEntries(6, 16, stepTerms)
			b := db.NewBatch()
			for _, e := range ents {
				v, _ := e.Marshal()
				_ = b.Set(entryKey(e.Index), v, nil)
			}
			hs := raftpb.HardState{Term: 3, Vote: 2, Commit: 12}
			hv, _ := hs.Marshal()
			_ = b.Set(hardStateKey, hv, nil)
			base := make([]byte, 16)
			base[7], base[15] = 5, 2 // index 5, term 2 (big-endian)
			_ = b.Set(logBaseKey, base, nil)
			if err := b.Commit(pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			if name != "clean" {
				w, _, err := openWAL(fs, "db/raftlog.tmp", walState{base: 5, baseTerm: 2, last: 5}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := w.append(ents[:3], nil, true); err != nil {
					t.Fatal(err)
				}
				_ = w.close()
			}

			s := openStore(t, fs)
			check := func(s *Store) {
				t.Helper()
				checkBounds(t, s, 6, 15)
				checkTerm(t, s, 5, 2, nil)
				checkEntries(t, s, 6, 16, ents)
				if got, _, _ := s.InitialState(); !reflect.DeepEqual(got, hs) {
					t.Errorf("HardState = %v; want %v", got, hs)
				}
			}
			check(s)
			it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRaft}, UpperBound: []byte{prefixRaft + 1}})
			if err != nil {
				t.Fatal(err)
			}
			for valid := it.First(); valid; valid = it.Next() {
				t.Errorf("Pebble still holds raft key %x", it.Key())
			}
			_ = it.Close()
			if _, err := fs.Stat("db/raftlog.tmp"); err == nil {
				t.Error("db/raftlog.tmp still exists after the migration")
			}
			s = reopen(t, s, fs)
			check(s)
		})
	}
}

// TestWALConcurrentReaders: raft's reads of old entries and DiskUsage run
// while the Ready goroutine appends, rotates and compacts (run with -race).
func TestWALConcurrentReaders(t *testing.T) {
	smallSegments(t)
	fs := vfs.NewMem()
	s := openStore(t, fs)
	mustAppend(t, s, raftpb.HardState{Term: 1}, logEntries(1, 2, constTerm(1)))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = s.DiskUsage()
			first, _ := s.FirstIndex()
			last, _ := s.LastIndex()
			_, _ = s.wal.entries(first, last+1, 1<<20)
		}
	}()
	for i := uint64(2); i <= 400; i += 4 {
		mustAppend(t, s, raftpb.HardState{Term: 1, Commit: i + 3}, logEntries(i, i+4, constTerm(1)))
	}
	close(stop)
	<-done
	s = reopen(t, s, fs)
	checkEntries(t, s, 1, 402, logEntries(1, 402, constTerm(1)))
}

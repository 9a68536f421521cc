package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
)

// Damage to the raft log: a torn write at the end of the newest segment is
// dropped (and logged); anything else is corruption, and Open says where.

// syncBuffer collects a store's logs, which come from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// logger logs warnings and errors to b.
func (b *syncBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func readFile(t *testing.T, fs vfs.FS, name string) []byte {
	t.Helper()
	f, err := fs.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := readAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// writeFile replaces the contents of name.
func writeFile(t *testing.T, fs vfs.FS, name string, data []byte) {
	t.Helper()
	f, err := fs.Create(name, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// damage XORs the byte at off of name with mask.
func damage(t *testing.T, fs vfs.FS, name string, off int64, mask byte) {
	t.Helper()
	data := readFile(t, fs, name)
	data[off] ^= mask
	writeFile(t, fs, name, data)
}

// wantCorrupt opens the store on fs and fails the test unless Open fails
// with ErrCorrupt naming the file name and offset off.
func wantCorrupt(t *testing.T, fs vfs.FS, name string, off int64) {
	t.Helper()
	s, err := Open(Config{Dir: "db", FS: fs})
	if err == nil {
		last, _ := s.LastIndex()
		hs, _, _ := s.InitialState()
		_ = s.Close()
		t.Fatalf("Open of a log damaged at %s offset %d succeeded (last index %d, hard state %v); want ErrCorrupt", name, off, last, hs)
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v; want ErrCorrupt", err)
	}
	for _, want := range []string{name, fmt.Sprintf("offset %d:", off), "replace the node"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open = %v; want it to say %q", err, want)
		}
	}
}

// twentyEntries opens a store on fs and appends entries 1-20 (term 3), five
// per synced Append, each with a HardState. It returns the store, still
// open, and the HardState last written.
func twentyEntries(t *testing.T, fs vfs.FS) (*Store, raftpb.HardState) {
	t.Helper()
	s := openStore(t, fs)
	var hs raftpb.HardState
	for i := uint64(1); i <= 20; i += 5 {
		hs = raftpb.HardState{Term: 3, Vote: 1, Commit: i + 4}
		mustAppend(t, s, hs, logEntries(i, i+5, constTerm(3)))
	}
	return s, hs
}

// TestWALDamageInNewestSegment: one damaged byte anywhere in what the
// newest segment holds, but its last record, makes Open fail with
// ErrCorrupt naming the file and the record's offset: the entries, votes
// and commits after it were synced, and dropping them would let the node
// take back what it acknowledged.
func TestWALDamageInNewestSegment(t *testing.T) {
	for _, tc := range []struct {
		name string
		// at returns the offset of the damaged record and of the byte
		// damaged, given entry 10's position and the segment's data.
		at   func(p walPos, data []byte) (rec, off int64)
		mask byte
	}{
		{"an entry's payload", func(p walPos, _ []byte) (int64, int64) { return p.off, p.off + walHeaderLen + int64(p.n)/2 }, 0x01},
		{"an entry's last byte", func(p walPos, _ []byte) (int64, int64) { return p.off, p.off + walHeaderLen + int64(p.n) - 1 }, 0x80},
		{"an entry's type", func(p walPos, _ []byte) (int64, int64) { return p.off, p.off }, 0x02},
		{"an entry's checksum", func(p walPos, _ []byte) (int64, int64) { return p.off, p.off + 5 }, 0x10},
		// The length fields: a record that seems to run on over the
		// records after it, past the end of the file, past any record's
		// length, or to stop inside its own payload.
		{"an entry's length, longer", func(p walPos, _ []byte) (int64, int64) { return p.off, p.off + 2 }, 0x01},
		{"an entry's length, past the end of the file", func(p walPos, _ []byte) (int64, int64) { return p.off, p.off + 3 }, 0x01},
		{"an entry's length, past any record", func(p walPos, _ []byte) (int64, int64) { return p.off, p.off + 4 }, 0x80},
		{"an entry's length, shorter", func(p walPos, data []byte) (int64, int64) { return p.off, p.off + 1 }, 0},
		// The HardState after entries 6-10, and the segment's first record.
		{"a hard state", func(p walPos, _ []byte) (int64, int64) {
			hs := p.off + walHeaderLen + int64(p.n)
			return hs, hs + walHeaderLen + 1
		}, 0x04},
		{"the format record's length", func(walPos, []byte) (int64, int64) { return 0, 2 }, 0x01},
		// The last record: damage there looks like a torn write, unless
		// no crash could leave it.
		{"the last record's length, past any record", func(_ walPos, data []byte) (int64, int64) {
			last := lastRecord(t, data)
			return last, last + 4
		}, 0x80},
		{"the format record's payload", func(walPos, []byte) (int64, int64) { return 0, walHeaderLen + 4 }, 0x01},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := vfs.NewMem()
			s, _ := twentyEntries(t, fs)
			p := s.wal.pos[9] // entry 10
			name := "db/raftlog/" + walName(p.seg)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if newest := walSegments(t, fs); newest[len(newest)-1] != p.seg {
				t.Fatalf("entry 10 is in segment %d; want the newest, %d", p.seg, newest[len(newest)-1])
			}
			rec, off := tc.at(p, readFile(t, fs, name))
			mask := tc.mask
			if mask == 0 {
				mask = byte(p.n & -p.n) // the length's lowest bit that is set
			}
			damage(t, fs, name, off, mask)
			wantCorrupt(t, fs, name, rec)
		})
	}
}

// TestWALDamageInOlderSegment: a damaged record in a segment older than
// the newest makes Open fail, even when no gap shows (a newer segment holds
// only its header) and the state machine has applied past it; even its last
// record, which in the newest segment could be a torn write.
func TestWALDamageInOlderSegment(t *testing.T) {
	for _, last := range []bool{false, true} {
		t.Run(fmt.Sprintf("last record=%v", last), func(t *testing.T) {
			fs := vfs.NewMem()
			s, _ := appendAndApply40(t, fs)
			s = reopen(t, s, fs) // the log goes on in a new segment
			p := s.wal.pos[19]   // entry 20
			name := "db/raftlog/" + walName(p.seg)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if newest := walSegments(t, fs); newest[len(newest)-1] == p.seg {
				t.Fatalf("entry 20 is in the newest segment, %d; want an older one", p.seg)
			}
			rec, off := p.off, p.off+walHeaderLen+int64(p.n)/2
			if last {
				rec = lastRecord(t, readFile(t, fs, name))
				off = rec + walHeaderLen
			}
			damage(t, fs, name, off, 0x20)
			wantCorrupt(t, fs, name, rec)
		})
	}
}

// lastRecord returns the offset of the last record of a chained segment's
// data.
func lastRecord(t *testing.T, data []byte) int64 {
	t.Helper()
	last := int64(-1)
	_, err := readSegment("seg", binary.LittleEndian.Uint64(data[walHeaderLen+4:]), data, true, func(off int64, _ byte, _ []byte, _ uint32) error {
		last = off
		return nil
	})
	if err != nil || last < 0 {
		t.Fatalf("reading the segment: %v (last record at %d)", err, last)
	}
	return last
}

// walRecords returns the offsets of the records of a segment's data (the
// format record too) and its end.
func walRecords(t *testing.T, seq uint64, data []byte) ([]int64, int64) {
	t.Helper()
	var offs []int64
	r, err := readSegment("seg", seq, data, false, func(off int64, _ byte, _ []byte, _ uint32) error {
		offs = append(offs, off)
		return nil
	})
	if err != nil {
		t.Fatalf("reading the segment: %v", err)
	}
	if r.chained {
		offs = append([]int64{0}, offs...)
	}
	return offs, r.end
}

// TestWALEveryByteOfARecord: one damaged byte in any record of a segment
// (of either format) is corruption at that record's offset, but in the
// newest segment's last record, which can be a torn write instead (in any
// segment of the first format: its writer never cleared torn writes).
func TestWALEveryByteOfARecord(t *testing.T) {
	// A segment of the chained format, as the log writes it: entries
	// small and large, hard states, proofs of syncs, markers.
	fs := vfs.NewMem()
	w, _, err := openWAL(fs, "log", walState{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 12; i += 3 {
		ents := logEntries(i, i+3, constTerm(2))
		if i == 4 {
			ents[1].Data = bytes.Repeat([]byte{7}, 700)
		}
		if err := w.append(ents, &raftpb.HardState{Term: 2, Vote: 1, Commit: i}, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.compact(3, 2); err != nil {
		t.Fatal(err)
	}
	if err := w.markSnapshot(20, 3); err != nil {
		t.Fatal(err)
	}
	if err := w.append(logEntries(13, 14, constTerm(2)), &raftpb.HardState{Term: 2, Vote: 1, Commit: 13}, true); err != nil {
		t.Fatal(err)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	chained := readFile(t, fs, "log/"+walName(1))

	// One of the first format, as the log wrote it before.
	first := appendMarker(nil, walCompact, 0, 0)
	for i := uint64(1); i <= 12; i++ {
		e := logEntries(i, i+1, constTerm(2))[0]
		b, _ := e.Marshal()
		first = appendRecord(first, walEntry, b)
		hs, _ := (&raftpb.HardState{Term: 2, Commit: i}).Marshal()
		first = appendRecord(first, walHardState, hs)
	}

	for _, seg := range []struct {
		name      string
		data      []byte
		olderTorn bool
	}{{"chained", chained, false}, {"first format", first, true}} {
		t.Run(seg.name, func(t *testing.T) {
			offs, end := walRecords(t, 1, seg.data)
			if end != int64(len(seg.data)) {
				t.Fatalf("the segment's records end at %d; want %d", end, len(seg.data))
			}
			nop := func(int64, byte, []byte, uint32) error { return nil }
			for i, rec := range offs {
				recEnd := end
				if i+1 < len(offs) {
					recEnd = offs[i+1]
				}
				lastRec := i == len(offs)-1
				for off := rec; off < recEnd; off++ {
					for _, mask := range []byte{0x01, 0x80, 0xff} {
						data := bytes.Clone(seg.data)
						data[off] ^= mask
						for _, newest := range []bool{false, true} {
							_, err := readSegment("seg", 1, data, newest, nop)
							if err == nil && (newest || seg.olderTorn) && lastRec {
								continue // may be a torn write
							}
							if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d:", rec)) {
								t.Fatalf("byte %d (record at %d) ^ %#x, newest %v: %v; want corruption at offset %d", off, rec, mask, newest, err, rec)
							}
						}
					}
				}
			}
		})
	}
}

// TestWALTornWriteIsDropped: what a crash can leave of the newest
// segment's last write (cut short, parts of it left as zeros, a sector not
// written before one that was) is dropped, with a warning naming the file,
// the offset and the bytes dropped; the entries before it are kept, and
// the log opens again after (the torn bytes were cleared: the segment is
// no longer the newest). A later record saying the segment was synced past
// the same damage makes it corruption.
func TestWALTornWriteIsDropped(t *testing.T) {
	type torn struct {
		off, end int64 // what is dropped
		keep     int   // entries of the torn write that are whole
	}
	for _, tc := range []struct {
		name     string
		prealloc bool
		// tear appends, after entries 1-10, a write of entries 11 and
		// on (data of dataLen bytes each, or the usual) and tears it
		// in segment data; it returns the torn data and what must be
		// dropped.
		dataLen int
		tear    func(data []byte, p []walPos) ([]byte, torn)
		corrupt bool // a synced write follows the torn one
	}{
		{name: "cut inside a record", tear: func(data []byte, p []walPos) ([]byte, torn) {
			cut := p[1].off + walHeaderLen + int64(p[1].n)/2
			return data[:cut], torn{p[1].off, nonZeroEnd(data[:cut]), 1}
		}},
		{name: "cut inside a header", tear: func(data []byte, p []walPos) ([]byte, torn) {
			cut := p[1].off + 4
			return data[:cut], torn{p[1].off, nonZeroEnd(data[:cut]), 1}
		}},
		{name: "part of a record, then zeros", prealloc: true, tear: func(data []byte, p []walPos) ([]byte, torn) {
			from := p[1].off + 20
			clear(data[from:])
			return data, torn{p[1].off, from, 1}
		}},
		{name: "a sector not written, a later one written", prealloc: true, dataLen: 2000, tear: func(data []byte, p []walPos) ([]byte, torn) {
			end := nonZeroEnd(data)
			s := (p[0].off + walHeaderLen + walSectorSize) &^ (walSectorSize - 1)
			clear(data[s : s+walSectorSize])
			return data, torn{p[0].off, end, 0}
		}},
		{name: "a sector of zeros before a synced write", prealloc: true, dataLen: 2000, corrupt: true, tear: func(data []byte, p []walPos) ([]byte, torn) {
			s := (p[0].off + walHeaderLen + walSectorSize) &^ (walSectorSize - 1)
			clear(data[s : s+walSectorSize])
			return data, torn{off: p[0].off}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.prealloc {
				preallocSegments(t)
			} else {
				smallSegments(t)
				walSegmentBytes = 1 << 20
			}
			fs := vfs.NewMem()
			s := openStore(t, fs)
			var ents []raftpb.Entry
			if tc.prealloc {
				ents = appendUntilPreallocated(t, s, 1, 0)
			} else {
				ents = logEntries(1, 11, constTerm(1))
				mustAppend(t, s, raftpb.HardState{Term: 1, Commit: 10}, ents)
			}
			last := uint64(len(ents))
			hs, _, _ := s.InitialState()
			more := logEntries(last+1, last+4, constTerm(1))
			if tc.dataLen > 0 {
				more[0].Data = bytes.Repeat([]byte{0xa5}, tc.dataLen)
			}
			mustAppend(t, s, raftpb.HardState{Term: 1, Commit: last + 3}, more)
			p := append([]walPos(nil), s.wal.pos[last:last+3]...)
			if tc.corrupt {
				mustAppend(t, s, raftpb.HardState{Term: 1, Commit: last + 4}, logEntries(last+4, last+5, constTerm(1)))
			}
			name := "db/raftlog/" + walName(p[0].seg)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			data, dropped := tc.tear(readFile(t, fs, name), p)
			writeFile(t, fs, name, data)
			if tc.corrupt {
				wantCorrupt(t, fs, name, dropped.off)
				return
			}

			var logs syncBuffer
			s, err := Open(Config{Dir: "db", FS: fs, Logger: logs.logger()})
			if err != nil {
				t.Fatalf("Open of a log ending in a torn write: %v", err)
			}
			t.Cleanup(func() { _ = s.Close() })
			ents = append(ents, more[:dropped.keep]...)
			last += uint64(dropped.keep)
			check := func(s *Store) {
				t.Helper()
				checkBounds(t, s, 1, last)
				checkEntries(t, s, 1, last+1, ents)
				if got, _, _ := s.InitialState(); got != hs {
					t.Errorf("HardState = %v; want %v (the one before the torn write)", got, hs)
				}
			}
			check(s)
			for _, want := range []string{"torn write", "file=" + name, fmt.Sprintf("offset=%d", dropped.off), fmt.Sprintf("bytes=%d", dropped.end-dropped.off)} {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("the warning does not say %q; logs:\n%s", want, logs.String())
				}
			}
			s = reopen(t, s, fs)
			check(s)
			again := logEntries(last+1, last+2, constTerm(2))
			mustAppend(t, s, raftpb.HardState{Term: 2, Commit: last + 1}, again)
			s = reopen(t, s, fs)
			checkEntries(t, s, 1, last+2, append(ents, again...))
		})
	}
}

// TestWALCrashesLeaveALogThatOpens: whatever part of the unsynced writes a
// crash keeps (any 4 KiB blocks of them), the log opens with every synced
// entry, and opens again after: no torn write is mistaken for damage.
func TestWALCrashesLeaveALogThatOpens(t *testing.T) {
	for _, prealloc := range []bool{false, true} {
		t.Run(fmt.Sprintf("preallocated=%v", prealloc), func(t *testing.T) {
			if prealloc {
				preallocSegments(t)
			} else {
				smallSegments(t)
				walSegmentBytes = 1 << 20
			}
			for seed := uint64(1); seed <= 12; seed++ {
				rng := rand.New(rand.NewPCG(seed, 1))
				fs := vfs.NewCrashableMem()
				s := openStore(t, fs)
				var synced []raftpb.Entry
				if prealloc {
					synced = appendUntilPreallocated(t, s, 1, 0)
				}
				// Synced writes and then unsynced ones, of entries
				// small and large (a few sectors).
				next := uint64(len(synced)) + 1
				written := append([]raftpb.Entry(nil), synced...)
				for i := range 12 {
					ents := logEntries(next, next+uint64(1+rng.IntN(4)), constTerm(1))
					if rng.IntN(3) == 0 {
						ents[0].Data = bytes.Repeat([]byte{byte(1 + rng.IntN(255))}, 500+rng.IntN(3000))
					}
					next += uint64(len(ents))
					sync := i < 6
					if err := s.Append(raftpb.HardState{Term: 1, Commit: next - 1}, ents, sync); err != nil {
						t.Fatal(err)
					}
					if sync {
						synced = append(synced, ents...)
					}
					written = append(written, ents...)
				}
				c := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rng})
				_ = s.Close()
				for round := range 2 {
					s, err := Open(Config{Dir: "db", FS: c})
					if err != nil {
						t.Fatalf("seed %d, open %d after the crash: %v", seed, round+1, err)
					}
					last, _ := s.LastIndex()
					if last < uint64(len(synced)) {
						t.Fatalf("seed %d: LastIndex() = %d after the crash; want at least the %d synced", seed, last, len(synced))
					}
					checkEntries(t, s, 1, last+1, written[:last])
					_ = s.Close()
				}
			}
		})
	}
}

// TestWALSnapshotIntentOutlivesSegments: a snapshot intent stays pending
// across new segments, also once the segment that took it is deleted, until
// a compaction or reset at or past its index.
func TestWALSnapshotIntentOutlivesSegments(t *testing.T) {
	smallSegments(t)
	fs := vfs.NewMem()
	reopenWAL := func(w *wal) (*wal, walState) {
		t.Helper()
		if err := w.close(); err != nil {
			t.Fatal(err)
		}
		w, st, err := openWAL(fs, "log", walState{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return w, st
	}
	w, _, err := openWAL(fs, "log", walState{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 60; i += 4 {
		if err := w.append(logEntries(i, i+4, constTerm(1)), &raftpb.HardState{Term: 1, Commit: i}, true); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			if err := w.markSnapshot(100, 2); err != nil {
				t.Fatal(err)
			}
		}
	}
	first := w.segs[0].seq
	// Below the intent's index, deleting the segment that took it.
	if err := w.compact(40, 1); err != nil {
		t.Fatal(err)
	}
	if w.segs[0].seq == first {
		t.Fatalf("segment %d, which took the intent, is still there after Compact(40)", first)
	}
	w, st := reopenWAL(w)
	if want := (walMark{100, 2}); st.intent != want {
		t.Fatalf("intent after its segment was deleted = %v; want %v", st.intent, want)
	}
	if err := w.compact(50, 1); err != nil {
		t.Fatal(err)
	}
	w, st = reopenWAL(w)
	if want := (walMark{100, 2}); st.intent != want {
		t.Fatalf("intent after Compact(50) = %v; want %v", st.intent, want)
	}
	if err := w.reset(100, 2); err != nil {
		t.Fatal(err)
	}
	w, st = reopenWAL(w)
	if st.intent != (walMark{}) || w.intent != (walMark{}) {
		t.Fatalf("intent after the reset at its index = %v (writer: %v); want none", st.intent, w.intent)
	}
	_ = w.close()
}

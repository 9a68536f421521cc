package storage

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// walFromFuzz turns fuzz input into segment seq of well-checksummed
// records, of the first format or the chained one, so that the fuzzer
// explores replay rather than the checksum: each record is a type byte
// (entry, hard state, compaction, reset, snapshot intent: taken modulo),
// then for entries an index and term byte, for markers an index and term
// byte, for HardStates a commit byte. A trailing partial byte sequence
// becomes a torn record.
func walFromFuzz(data []byte, seq uint64, chained bool) []byte {
	var seg []byte
	var crc uint32
	add := func(typ byte, payload []byte) {
		if chained {
			seg, crc = appendChained(seg, crc, typ, payload)
		} else {
			seg = appendRecord(seg, typ, payload)
		}
	}
	if chained {
		var v [12]byte
		binary.LittleEndian.PutUint32(v[:], walFormatChained)
		binary.LittleEndian.PutUint64(v[4:], seq)
		seg = appendRecord(seg, walVersion, v[:])
		crc = binary.LittleEndian.Uint32(seg[4:])
	}
	for len(data) >= 3 {
		typ := []byte{walEntry, walHardState, walCompact, walReset, walSnapshot}[data[0]%5]
		if typ == walSnapshot && !chained {
			typ = walReset
		}
		a, b := uint64(data[1]), uint64(data[2])
		data = data[3:]
		switch typ {
		case walEntry:
			e := raftpb.Entry{Index: a, Term: b, Data: tickData(a)}
			v, _ := e.Marshal()
			add(walEntry, v)
		case walHardState:
			hs := raftpb.HardState{Term: b, Commit: a}
			v, _ := hs.Marshal()
			add(walHardState, v)
		default:
			var p [16]byte
			binary.LittleEndian.PutUint64(p[:], a)
			binary.LittleEndian.PutUint64(p[8:], b)
			add(typ, p[:])
		}
	}
	if len(data) > 0 {
		n := len(seg)
		add(walEntry, make([]byte, 32))
		seg = seg[:n+len(data)*3]
	}
	return seg
}

// FuzzWALReplay: whatever records the segments hold, Open returns a store
// or ErrCorrupt and never panics, and an opened store's log answers for its
// own bounds.
func FuzzWALReplay(f *testing.F) {
	f.Add([]byte{0, 1, 1, 0, 2, 1, 0, 3, 2, 1, 3, 2})           // entries 1-3, HardState
	f.Add([]byte{0, 1, 1, 0, 2, 1, 0, 3, 2, 2, 2, 1, 0, 4, 2})  // a compaction at 2
	f.Add([]byte{0, 1, 1, 0, 5, 1})                             // a gap
	f.Add([]byte{0, 1, 1, 0, 2, 1, 0, 2, 3, 3, 9, 4, 0, 10, 4}) // overwrite, reset
	f.Add([]byte{0, 1, 1, 0, 2})                                // torn tail
	f.Fuzz(func(t *testing.T, data []byte) {
		half := len(data) / 2
		half -= half % 3
		fs := vfs.NewMem()
		if err := fs.MkdirAll("db/raftlog", 0o755); err != nil {
			t.Fatal(err)
		}
		// The older segment of the first format or the chained one (as
		// a store written before the chained format and opened since), the
		// newer chained or not as the input's length is odd or even.
		for i, part := range [][]byte{data[:half], data[half:]} {
			seq := uint64(i + 1)
			f, err := fs.Create("db/raftlog/"+walName(seq), vfs.WriteCategoryUnspecified)
			if err != nil {
				t.Fatal(err)
			}
			chained := i == 1 || len(data)%2 == 1
			if _, err := f.Write(walFromFuzz(part, seq, chained)); err != nil {
				t.Fatal(err)
			}
			_ = f.Close()
		}
		s, err := Open(Config{Dir: "db", FS: fs})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: %v; want ErrCorrupt or success", err)
			}
			return
		}
		defer s.Close()
		first, _ := s.FirstIndex()
		last, _ := s.LastIndex()
		if first > last+1 {
			t.Fatalf("FirstIndex %d > LastIndex %d + 1", first, last)
		}
		ents, err := s.Entries(first, last+1, ^uint64(0))
		if err != nil && !errors.Is(err, raft.ErrUnavailable) {
			t.Fatalf("Entries(%d, %d): %v", first, last+1, err)
		}
		for i, e := range ents {
			if e.Index != first+uint64(i) {
				t.Fatalf("entry %d has index %d; want %d", i, e.Index, first+uint64(i))
			}
			if term, _ := s.Term(e.Index); term != e.Term {
				t.Fatalf("Term(%d) = %d; the entry says %d", e.Index, term, e.Term)
			}
		}
	})
}

// FuzzWALSegmentBytes: whatever bytes a segment holds, reading it returns
// its records or ErrCorrupt and never panics; what it keeps is within the
// file, and a torn write it drops follows the records it keeps.
func FuzzWALSegmentBytes(f *testing.F) {
	f.Add(walFromFuzz([]byte{0, 1, 1, 0, 2, 1, 1, 3, 2, 4, 3, 2}, 1, true), true)
	f.Add(walFromFuzz([]byte{0, 1, 1, 0, 2, 1, 1, 3, 2, 0, 3}, 1, true), false)
	f.Add(walFromFuzz([]byte{0, 1, 1, 0, 2, 1, 2, 2, 1, 0, 3}, 1, false), true)
	f.Add(append(walFromFuzz([]byte{0, 1, 1}, 1, true), make([]byte, 1024)...), false)
	f.Fuzz(func(t *testing.T, data []byte, newest bool) {
		r, err := readSegment("seg", 1, data, newest, func(off int64, typ byte, payload []byte, seed uint32) error {
			if off < 0 || off+walHeaderLen+int64(len(payload)) > int64(len(data)) {
				t.Fatalf("record at %d of %d bytes outside the %d-byte segment", off, len(payload), len(data))
			}
			return nil
		})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("readSegment: %v; want ErrCorrupt or success", err)
			}
			return
		}
		if r.end < 0 || r.end > int64(len(data)) || r.dataEnd > int64(len(data)) {
			t.Fatalf("read to %d (data to %d) of a %d-byte segment", r.end, r.dataEnd, len(data))
		}
		if r.torn && r.end >= r.dataEnd {
			t.Fatalf("a torn write at %d, after the data's end at %d", r.end, r.dataEnd)
		}
	})
}

package storage

import (
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// walFromFuzz turns fuzz input into a segment of well-checksummed records,
// so that the fuzzer explores replay rather than the checksum: each record
// is a type byte (1-4, others taken modulo), then for entries an index and
// term byte, for markers an index and term byte, for HardStates a commit
// byte. A trailing partial byte sequence becomes a torn record.
func walFromFuzz(data []byte) []byte {
	var seg []byte
	for len(data) >= 3 {
		typ := data[0]%4 + 1
		a, b := uint64(data[1]), uint64(data[2])
		data = data[3:]
		switch typ {
		case walEntry:
			e := raftpb.Entry{Index: a, Term: b, Data: tickData(a)}
			v, _ := e.Marshal()
			seg = appendRecord(seg, walEntry, v)
		case walHardState:
			hs := raftpb.HardState{Term: b, Commit: a}
			v, _ := hs.Marshal()
			seg = appendRecord(seg, walHardState, v)
		default:
			seg = appendMarker(seg, typ, a, b)
		}
	}
	if len(data) > 0 {
		torn := appendRecord(nil, walEntry, make([]byte, 32))
		seg = append(seg, torn[:len(data)*3]...)
	}
	return seg
}

// FuzzWALReplay: whatever records the segments hold, Open returns a store
// or an error and never panics, and an opened store's log answers for its
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
		for i, part := range [][]byte{data[:half], data[half:]} {
			f, err := fs.Create("db/raftlog/"+walName(uint64(i+1)), vfs.WriteCategoryUnspecified)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(walFromFuzz(part)); err != nil {
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

package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/internal/bugs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// This file keeps the Raft log outside Pebble, in segment files of
// checksummed records that are only ever appended to. In Pebble every entry
// was a key: inserted into a memtable, flushed, compacted with the records
// and deleted again, though raft reads it back at most a few times; here it
// is a few bytes appended to a file and one fdatasync per Ready.
//
// A segment is <dir>/<seq>.wal (seq in hex, 16 digits, increasing). A
// record is: payload length (u32 LE), CRC-32C of type and payload (u32 LE),
// type (1 byte), payload. Types:
//
//	walEntry     a raftpb.Entry; an entry at index i replaces any entry at i
//	             or after (a new leader's log overwriting an old tail)
//	walHardState a raftpb.HardState; the last one read wins
//	walCompact   index, term (u64 LE each): entries up to index are gone;
//	             index has term
//	walReset     index, term: the log is empty after index (a snapshot's)
//
// Every segment starts with a walCompact (or walReset) and a walHardState
// for the log as it stood, so older segments can be deleted once their
// entries are all compacted; a segment is synced before the next one is
// created, so only the last can end in a torn write. Replay reads every
// segment in order and stops a segment at its first damaged record; entries
// lost that way leave a gap, which replay reports as corruption unless a
// later walCompact covers it. After opening, appends go to a new segment,
// never to one that may end in a torn record.

const (
	walEntry byte = iota + 1
	walHardState
	walCompact
	walReset
)

// walHeaderLen is a record's length, checksum and type.
const walHeaderLen = 9

// walSegmentBytes is the size past which appends start a new segment (a
// variable for tests).
var walSegmentBytes int64 = 32 << 20

// Segments are written into files filled with zeros beforehand (a "spare",
// prepared by a goroutine while the log writes elsewhere): an fdatasync of
// blocks the file already has writes the data only, while one that grew the
// file must also commit the file system's journal (the new size, the new
// extents). Measured on this project's VMs (ext4): 1.6x as many fdatasyncs
// per second, and 40% less CPU each. Replay stops at the zeros as at any
// damaged record: a zero header's checksum does not match.
//
// walPrealloc turns it off (tests of torn or damaged tails that write past
// a segment's end). A spare is prepared once the active segment holds
// walSpareAfter bytes, so a store that logs little never writes one, and a
// segment that was not preallocated (the first after Open) gives way to the
// spare as soon as it is ready.
var (
	walPrealloc         = true
	walSpareAfter int64 = 256 << 10
)

// walSpareName is the file a spare is prepared in; it is renamed to a
// segment's name when used, and removed if found at Open.
const walSpareName = "spare.wal.tmp"

// walPos is where an entry's record is.
type walPos struct {
	seg uint64 // segment seq
	off int64  // offset of the record's header
	n   uint32 // payload length
}

type walSegment struct {
	seq  uint64
	f    vfs.File
	size int64
	// prealloc: the file was filled with zeros first, to alloc bytes.
	prealloc bool
	alloc    int64
	// maxIndex is the largest entry index written to the segment (0 if
	// none): once the log's base reaches it, the segment holds nothing
	// the log needs.
	maxIndex uint64
}

// wal is the Raft log on disk. It is not safe for concurrent use: the Store
// serializes writers (one Ready at a time) and takes its lock for readers
// that may race with compaction.
type wal struct {
	fs  vfs.FS
	dir string

	// mu guards segs (their sizes too), pos and base against readers
	// (entries, bytes); only the single writer changes them, under mu,
	// doing its IO outside it.
	mu   sync.RWMutex
	segs []*walSegment // by seq; the last is the one appended to
	// pos[i] is the record of entry base+1+i.
	pos  []walPos
	base uint64

	// The writer's own: the base's term and the last HardState written,
	// for the header of the next segment; a scratch buffer.
	baseTerm uint64
	hs       raftpb.HardState
	buf      []byte

	// spare receives the outcome of preparing the next segment's file
	// (nil, or an error) while preparing; nil otherwise. spareBytes (under
	// mu) is its size on disk, for bytes.
	spare      chan error
	spareBytes int64
}

// walState is the log as replay recovered it (or as a new log starts).
type walState struct {
	hs             raftpb.HardState
	base, baseTerm uint64
	last           uint64
	// runs are the terms of the entries (base, last], as in logIndex.
	runs []termRun
}

func walName(seq uint64) string { return fmt.Sprintf("%016x.wal", seq) }

func parseWALName(name string) (uint64, bool) {
	hex, ok := strings.CutSuffix(name, ".wal")
	if !ok || len(hex) != 16 {
		return 0, false
	}
	seq, err := strconv.ParseUint(hex, 16, 64)
	return seq, err == nil
}

// listWAL returns the seqs of dir's segments in order.
func listWAL(fs vfs.FS, dir string) ([]uint64, error) {
	names, err := fs.List(dir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, name := range names {
		if seq, ok := parseWALName(name); ok {
			seqs = append(seqs, seq)
		}
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	return seqs, nil
}

// openWAL replays the segments in dir. fresh is the state to start from
// when there are none (a new store, or one whose log was in Pebble); it is
// written as the first segment's header.
func openWAL(fs vfs.FS, dir string, fresh walState) (*wal, walState, error) {
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return nil, walState{}, err
	}
	// The directory's own entry must be durable too.
	if err := syncDir(fs, fs.PathDir(dir)); err != nil {
		return nil, walState{}, err
	}
	seqs, err := listWAL(fs, dir)
	if err != nil {
		return nil, walState{}, err
	}
	w := &wal{fs: fs, dir: dir}
	// A spare left by a crash may be only partly filled.
	if spare := fs.PathJoin(dir, walSpareName); exists(fs, spare) {
		if err := fs.Remove(spare); err != nil {
			return nil, walState{}, err
		}
	}
	st, next := fresh, uint64(1)
	if len(seqs) > 0 {
		if st, err = w.replay(seqs); err != nil {
			_ = w.close()
			return nil, walState{}, err
		}
		next = seqs[len(seqs)-1] + 1
	}
	w.base, w.baseTerm, w.hs = st.base, st.baseTerm, st.hs
	// Append to a new segment, never after a record that may be torn.
	if err := w.rotate(walCompact, st.base, st.baseTerm, next); err != nil {
		_ = w.close()
		return nil, walState{}, err
	}
	return w, st, nil
}

// replay reads every segment, rebuilding the log's bounds, terms and
// record positions.
func (w *wal) replay(seqs []uint64) (walState, error) {
	var st walState
	var terms []uint64 // terms[i]: entry base+1+i
	// floating: entries were lost before the first one held (the segments
	// holding them were deleted, or damaged); a later walCompact must
	// cover them.
	floating := false
	for _, seq := range seqs {
		f, err := w.fs.Open(w.fs.PathJoin(w.dir, walName(seq)))
		if err != nil {
			return st, err
		}
		seg := &walSegment{seq: seq, f: f}
		w.segs = append(w.segs, seg)
		seg.size, err = readRecords(f, func(off int64, typ byte, payload []byte) error {
			switch typ {
			case walEntry:
				var e raftpb.Entry
				if err := e.Unmarshal(payload); err != nil {
					return fmt.Errorf("%w: raft log entry in %s: %v", ErrCorrupt, walName(seq), err)
				}
				seg.maxIndex = max(seg.maxIndex, e.Index)
				if e.Index <= st.base {
					return nil
				}
				last := st.base + uint64(len(terms))
				if e.Index > last+1 {
					// A gap: keep the newer entries, forget the rest.
					floating = true
					st.base = e.Index - 1
					st.baseTerm = 0
					terms, w.pos = terms[:0], w.pos[:0]
				}
				k := int(e.Index - st.base - 1)
				terms = append(terms[:k], e.Term)
				w.pos = append(w.pos[:k], walPos{seg: seq, off: off, n: uint32(len(payload))})
			case walHardState:
				if err := st.hs.Unmarshal(payload); err != nil {
					return fmt.Errorf("%w: raft log hard state in %s: %v", ErrCorrupt, walName(seq), err)
				}
			case walCompact, walReset:
				if len(payload) != 16 {
					return fmt.Errorf("%w: raft log marker in %s", ErrCorrupt, walName(seq))
				}
				index := binary.LittleEndian.Uint64(payload)
				term := binary.LittleEndian.Uint64(payload[8:])
				last := st.base + uint64(len(terms))
				switch {
				case typ == walReset || index >= last:
					terms, w.pos = terms[:0], w.pos[:0]
					st.base, st.baseTerm = index, term
					floating = false
				case index >= st.base:
					drop := int(index - st.base)
					terms = append(terms[:0], terms[drop:]...)
					w.pos = append(w.pos[:0], w.pos[drop:]...)
					st.base, st.baseTerm = index, term
					floating = false
				}
			default:
				return fmt.Errorf("%w: raft log record type %d in %s", ErrCorrupt, typ, walName(seq))
			}
			return nil
		})
		if err != nil {
			return st, err
		}
		// A preallocated segment holds more than its records on disk.
		if fi, err := f.Stat(); err == nil {
			seg.alloc = fi.Size()
		}
	}
	if floating {
		return st, fmt.Errorf("%w: gap in the raft log: no entries before %d", ErrCorrupt, st.base+1)
	}
	st.last = st.base + uint64(len(terms))
	for i, t := range terms {
		if n := len(st.runs); n == 0 || st.runs[n-1].term != t {
			st.runs = append(st.runs, termRun{st.base + 1 + uint64(i), t})
		}
	}
	return st, nil
}

// readRecords calls fn for each intact record of f, in order, and stops at
// the end or at the first record that is cut or fails its checksum (a
// torn write, or the zeros of a preallocated segment). It returns the
// offset where it stopped, or an error from fn.
func readRecords(f vfs.File, fn func(off int64, typ byte, payload []byte) error) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	data := make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	var off int64
	for off+walHeaderLen <= size {
		h := data[off : off+walHeaderLen]
		n := binary.LittleEndian.Uint32(h)
		sum := binary.LittleEndian.Uint32(h[4:])
		if off+walHeaderLen+int64(n) > size {
			break
		}
		rec := data[off+8 : off+walHeaderLen+int64(n)] // type + payload
		if crc32.Checksum(rec, castagnoli) != sum {
			break
		}
		if err := fn(off, rec[0], rec[1:]); err != nil {
			return off, err
		}
		off += walHeaderLen + int64(n)
	}
	return off, nil
}

func appendRecord(buf []byte, typ byte, payload []byte) []byte {
	start := len(buf)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(payload)))
	buf = append(buf, 0, 0, 0, 0, typ)
	buf = append(buf, payload...)
	sum := crc32.Checksum(buf[start+8:], castagnoli)
	binary.LittleEndian.PutUint32(buf[start+4:], sum)
	return buf
}

func appendMarker(buf []byte, typ byte, index, term uint64) []byte {
	var p [16]byte
	binary.LittleEndian.PutUint64(p[:], index)
	binary.LittleEndian.PutUint64(p[8:], term)
	return appendRecord(buf, typ, p[:])
}

func (w *wal) active() *walSegment { return w.segs[len(w.segs)-1] }

func (w *wal) last() uint64 { return w.base + uint64(len(w.pos)) }

// rotate syncs the active segment, if any, and starts segment seq with a
// marker (walCompact or walReset at index, term) and the last HardState,
// synced, its directory entry too.
func (w *wal) rotate(marker byte, index, term uint64, seq uint64) error {
	if len(w.segs) > 0 {
		if err := syncFile(w.active().f); err != nil {
			return err
		}
	}
	name := w.fs.PathJoin(w.dir, walName(seq))
	f, prealloc, err := w.newSegmentFile(name)
	if err != nil {
		return err
	}
	buf := appendMarker(nil, marker, index, term)
	hb, err := w.hs.Marshal()
	if err == nil {
		buf = appendRecord(buf, walHardState, hb)
		_, err = f.Write(buf)
	}
	if err == nil {
		err = syncFile(f)
	}
	if err == nil {
		err = w.syncDir()
	}
	if err != nil {
		_ = f.Close()
		_ = w.fs.Remove(name)
		if prealloc {
			w.mu.Lock()
			w.spareBytes = 0
			w.mu.Unlock()
		}
		return err
	}
	w.mu.Lock()
	seg := &walSegment{seq: seq, f: f, size: int64(len(buf)), prealloc: prealloc}
	if prealloc {
		seg.alloc = w.spareBytes
		w.spareBytes = 0
	}
	w.segs = append(w.segs, seg)
	w.mu.Unlock()
	return nil
}

// newSegmentFile creates the file of a new segment at name: the spare, if
// one is ready (renamed; the caller syncs the directory), else an empty
// file.
func (w *wal) newSegmentFile(name string) (f vfs.File, prealloc bool, err error) {
	if w.spare != nil {
		select {
		case err := <-w.spare:
			w.spare = nil
			spare := w.fs.PathJoin(w.dir, walSpareName)
			if err == nil {
				err = w.fs.Rename(spare, name)
			}
			if err == nil {
				if f, err = w.fs.OpenReadWrite(name, vfs.WriteCategoryUnspecified); err == nil {
					return f, true, nil
				}
			}
			// A spare that failed is no reason to stop: the segment is
			// made as without one.
			_ = w.fs.Remove(spare)
			_ = w.fs.Remove(name)
			w.mu.Lock()
			w.spareBytes = 0
			w.mu.Unlock()
		default:
		}
	}
	f, err = w.fs.Create(name, vfs.WriteCategoryUnspecified)
	return f, false, err
}

// prepareSpare starts filling the next segment's file with zeros, unless
// that is under way or off.
func (w *wal) prepareSpare() {
	if !walPrealloc || w.spare != nil {
		return
	}
	done := make(chan error, 1)
	w.spare = done
	fs, name, size := w.fs, w.fs.PathJoin(w.dir, walSpareName), walSegmentBytes
	w.mu.Lock()
	w.spareBytes = size
	w.mu.Unlock()
	go func() { done <- fillZeros(fs, name, size) }()
}

// fillZeros writes a file of size zero bytes at name, synced. It syncs
// every few MiB so as not to hand the disk one long flush that the log's
// own fdatasyncs would queue behind.
func fillZeros(fs vfs.FS, name string, size int64) error {
	f, err := fs.Create(name, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	zeros := make([]byte, min(size, 1<<20))
	for off := int64(0); off < size && err == nil; {
		n := min(int64(len(zeros)), size-off)
		if _, err = f.Write(zeros[:n]); err == nil {
			off += n
			if off%(4<<20) == 0 || off == size {
				err = syncFile(f)
			}
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncFile(f vfs.File) error {
	if bugs.NoFsync {
		return nil
	}
	return f.SyncData()
}

func (w *wal) sync() error { return syncFile(w.active().f) }

func (w *wal) syncDir() error { return syncDir(w.fs, w.dir) }

func syncDir(fs vfs.FS, dir string) error {
	if bugs.NoFsync {
		return nil
	}
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// append writes ents (which may overwrite the tail from ents[0].Index on)
// and hs (unless empty) with one write, synced if sync. Entries at or below
// base must have been dropped by the caller.
func (w *wal) append(ents []raftpb.Entry, hs *raftpb.HardState, sync bool) error {
	if seg := w.active(); seg.size >= walSegmentBytes || (!seg.prealloc && w.spareReady()) {
		if err := w.rotate(walCompact, w.base, w.baseTerm, seg.seq+1); err != nil {
			return err
		}
	}
	seg := w.active()
	if seg.size >= walSpareAfter {
		w.prepareSpare()
	}
	buf := w.buf[:0]
	type at struct {
		off int64
		n   uint32
	}
	var offs [64]at
	locs := offs[:0]
	for i := range ents {
		size := ents[i].Size()
		start := len(buf)
		buf = binary.LittleEndian.AppendUint32(buf, uint32(size))
		buf = append(buf, 0, 0, 0, 0, walEntry)
		buf = slices.Grow(buf, size)[:len(buf)+size]
		if _, err := ents[i].MarshalToSizedBuffer(buf[start+walHeaderLen:]); err != nil {
			return err
		}
		binary.LittleEndian.PutUint32(buf[start+4:], crc32.Checksum(buf[start+8:], castagnoli))
		locs = append(locs, at{seg.size + int64(start), uint32(size)})
	}
	if hs != nil {
		hb, err := hs.Marshal()
		if err != nil {
			return err
		}
		buf = appendRecord(buf, walHardState, hb)
	}
	if len(buf) == 0 {
		return nil
	}
	w.buf = buf
	if cap(w.buf) > 4<<20 {
		w.buf = nil // do not keep a huge buffer after a burst
	}
	if _, err := seg.f.Write(buf); err != nil {
		return err
	}
	if sync {
		if err := w.sync(); err != nil {
			return err
		}
	}
	if hs != nil {
		w.hs = *hs
	}
	w.mu.Lock()
	seg.size += int64(len(buf))
	if len(ents) > 0 {
		w.pos = w.pos[:ents[0].Index-w.base-1]
		for i := range ents {
			w.pos = append(w.pos, walPos{seg: seg.seq, off: locs[i].off, n: locs[i].n})
		}
		seg.maxIndex = max(seg.maxIndex, ents[len(ents)-1].Index)
	}
	w.mu.Unlock()
	return nil
}

// entries reads the entries [lo, hi) within maxSize bytes (at least one).
// It returns raft.ErrCompacted or raft.ErrUnavailable when they are not
// all in the log (any more).
func (w *wal) entries(lo, hi, maxSize uint64) ([]raftpb.Entry, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if lo <= w.base {
		return nil, raft.ErrCompacted
	}
	if hi > w.last()+1 {
		return nil, raft.ErrUnavailable
	}
	ents := make([]raftpb.Entry, 0, min(hi-lo, 64))
	var size uint64
	for i := lo; i < hi; i++ {
		e, err := w.entry(i)
		if err != nil {
			return nil, err
		}
		size += uint64(e.Size())
		if len(ents) > 0 && size > maxSize {
			break
		}
		ents = append(ents, e)
	}
	return ents, nil
}

// entry reads the entry at index (base < index <= last; w.mu held).
func (w *wal) entry(index uint64) (raftpb.Entry, error) {
	p := w.pos[index-w.base-1]
	var seg *walSegment
	for _, s := range w.segs {
		if s.seq == p.seg {
			seg = s
			break
		}
	}
	var e raftpb.Entry
	if seg == nil {
		return e, fmt.Errorf("%w: raft log segment %s of entry %d is gone", ErrCorrupt, walName(p.seg), index)
	}
	rec := make([]byte, walHeaderLen+int(p.n))
	if _, err := seg.f.ReadAt(rec, p.off); err != nil {
		return e, err
	}
	if crc32.Checksum(rec[8:], castagnoli) != binary.LittleEndian.Uint32(rec[4:]) || rec[8] != walEntry {
		return e, fmt.Errorf("%w: raft log entry %d fails its checksum", ErrCorrupt, index)
	}
	if err := e.Unmarshal(rec[walHeaderLen:]); err != nil {
		return e, fmt.Errorf("%w: raft log entry %d: %v", ErrCorrupt, index, err)
	}
	if e.Index != index {
		return e, fmt.Errorf("%w: raft log holds entry %d where %d belongs", ErrCorrupt, e.Index, index)
	}
	return e, nil
}

// compact records that entries up to index (of term) are gone and deletes
// the segments that hold nothing later. The caller has made the state
// machine durable at or past index first.
func (w *wal) compact(index, term uint64) error {
	buf := appendMarker(w.buf[:0], walCompact, index, term)
	seg := w.active()
	if _, err := seg.f.Write(buf); err != nil {
		return err
	}
	w.mu.Lock()
	seg.size += int64(len(buf))
	drop := min(int(index-w.base), len(w.pos))
	w.pos = append(w.pos[:0], w.pos[drop:]...)
	w.base = index
	w.mu.Unlock()
	w.baseTerm = term
	return w.dropSegments(func(s *walSegment) bool { return s.maxIndex <= index })
}

// reset empties the log after a snapshot at index (of term): a new segment
// starting with the walReset, then the old segments are deleted.
func (w *wal) reset(index, term uint64) error {
	if err := w.rotate(walReset, index, term, w.active().seq+1); err != nil {
		return err
	}
	w.mu.Lock()
	w.pos = w.pos[:0]
	w.base = index
	w.mu.Unlock()
	w.baseTerm = term
	return w.dropSegments(func(*walSegment) bool { return true })
}

// dropSegments deletes the segments before the active one for which
// unneeded holds, once the active one is synced (its marker must outlive
// them).
func (w *wal) dropSegments(unneeded func(*walSegment) bool) error {
	n := 0
	for n < len(w.segs)-1 && unneeded(w.segs[n]) {
		n++
	}
	if n == 0 {
		return nil
	}
	if err := w.sync(); err != nil {
		return err
	}
	w.mu.Lock()
	gone := append([]*walSegment(nil), w.segs[:n]...)
	w.segs = append(w.segs[:0], w.segs[n:]...)
	w.mu.Unlock()
	for _, s := range gone {
		_ = s.f.Close()
		if err := w.fs.Remove(w.fs.PathJoin(w.dir, walName(s.seq))); err != nil {
			return err
		}
	}
	return nil
}

// bytes is what the log occupies on disk: every segment (a preallocated
// one at least its preallocated size) and the spare.
func (w *wal) bytes() uint64 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	n := w.spareBytes
	for _, s := range w.segs {
		n += max(s.size, s.alloc)
	}
	return uint64(n)
}

// spareReady reports whether a spare has been prepared (successfully or
// not) and is waiting to be used.
func (w *wal) spareReady() bool {
	return len(w.spare) > 0 // len of a nil channel is 0
}

func (w *wal) close() error {
	if w.spare != nil {
		<-w.spare
		w.spare = nil
		_ = w.fs.Remove(w.fs.PathJoin(w.dir, walSpareName))
		w.mu.Lock()
		w.spareBytes = 0
		w.mu.Unlock()
	}
	var err error
	for _, s := range w.segs {
		if cerr := s.f.Close(); err == nil {
			err = cerr
		}
	}
	w.segs = nil
	return err
}

func exists(fs vfs.FS, name string) bool {
	_, err := fs.Stat(name)
	return err == nil
}

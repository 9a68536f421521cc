package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

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
// A segment is <dir>/<seq>.wal (seq in hex, 16 digits, increasing). Record
// types:
//
//	walEntry     a raftpb.Entry; an entry at index i replaces any entry at i
//	             or after (a new leader's log overwriting an old tail)
//	walHardState a raftpb.HardState; the last one read wins
//	walCompact   index, term (u64 LE each): entries up to index are gone;
//	             index has term
//	walReset     index, term: the log is empty after index (a snapshot's)
//	walVersion   format (u32 LE), seq (u64 LE): the segment's first record,
//	             in the chained format
//	walSynced    n (u64 LE): the segment's first n bytes had been synced
//	             when this record was written
//	walSnapshot  index, term: a snapshot at index is being installed in the
//	             state machine (see markSnapshot); pending until a walCompact
//	             or walReset at or past index
//
// Two formats. The first: payload length (u32 LE), CRC-32C of type and
// payload (u32 LE), type, payload. The chained format, of every segment
// this code creates: a walVersion record in the first format's layout, then
// records of type (its top bit set: see walTypeTag), payload length (u32
// LE), CRC-32C (u32 LE) of type, length and payload that continues from the
// previous record's (from the walVersion record's, whose payload names the
// segment), then the payload. A record is intact only where the records
// before it put it, in this segment: a stale or misplaced one never passes.
//
// Every segment starts with a walCompact (or walReset), any pending
// walSnapshot and a walHardState for the log as it stood, so older
// segments can be deleted once their entries are all compacted; a segment
// is synced before the next one is created, so only the newest can end in a
// torn write. After opening, appends go to a new segment, never to one that
// may end in a torn record.
//
// Damage. A crash while appending can leave the newest segment's last
// write torn: cut short (the file ends inside it), or with sectors the disk
// never wrote, which read as zeros (the preallocated or newly grown file's
// old contents), possibly followed by sectors of it that it did write. Any
// other failure of a record is damage to data that was synced, and Open
// fails (see readSegment and tornWrite). A torn write is overwritten with
// zeros at Open, so that once newer segments exist nothing but damage can
// make an older one fail.

const (
	walEntry byte = iota + 1
	walHardState
	walCompact
	walReset
	walVersion
	walSynced
	walSnapshot
)

// walHeaderLen is a record's header: length, checksum and type.
const walHeaderLen = 9

// walFormatChained is the format a walVersion record names.
const walFormatChained = 2

// walTypeTag is set in the type byte of every record of the chained
// format. A record then never starts with a zero byte, not even after one
// of its bits flips, so that no damage of one bit makes a record's start
// look like a sector that a crash left unwritten (zeros).
const walTypeTag = 0x80

// walMaxRecord bounds a record's payload. Append refuses larger entries
// (raft accepts no uncommitted tail that large), so a longer length field
// is damage, never a record that a crash cut short.
const walMaxRecord = 1 << 30

// walSectorSize is the unit a disk writes whole or not at all, at the
// least: a sector a crash left unwritten reads as its old contents, zeros.
const walSectorSize = 512

// walScanBudget bounds the bytes tornWrite checksums while it looks for a
// record inside a damaged one (of arbitrary contents).
const walScanBudget = 64 << 20

// walSegmentBytes is the size past which appends start a new segment (a
// variable for tests).
var walSegmentBytes int64 = 32 << 20

// Segments are written into files filled with zeros beforehand (a "spare",
// prepared by a goroutine while the log writes elsewhere): an fdatasync of
// blocks the file already has writes the data only, while one that grew the
// file must also commit the file system's journal (the new size, the new
// extents); docs/performance-notes.md has the figures. Replay ends a segment where only zeros
// are left to the end of the file.
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
	seg  uint64 // segment seq
	off  int64  // offset of the record's header
	n    uint32 // payload length
	seed uint32 // the chain's value before the record (chained format)
}

type walSegment struct {
	seq  uint64
	f    vfs.File
	size int64
	// chained: the segment is of the chained format.
	chained bool
	// prealloc: the file was filled with zeros first, to alloc bytes.
	prealloc bool
	alloc    int64
	// maxIndex is the largest entry index written to the segment (0 if
	// none): once the log's base reaches it, the segment holds nothing
	// the log needs.
	maxIndex uint64
	// The writer's own, in the segment it appends to: synced is how much
	// of it a completed sync covered, marked the most that a walSynced
	// record in it says.
	synced, marked int64
}

// walMark is the index and term of a marker; a zero index is none.
type walMark struct{ index, term uint64 }

// wal is the Raft log on disk. It is not safe for concurrent use: the Store
// serializes writers (one Ready at a time) and takes its lock for readers
// that may race with compaction.
type wal struct {
	fs     vfs.FS
	dir    string
	logger *slog.Logger

	// mu guards segs (their sizes too), pos and base against readers
	// (entries, bytes); only the single writer changes them, under mu,
	// doing its IO outside it.
	mu   sync.RWMutex
	segs []*walSegment // by seq; the last is the one appended to
	// pos[i] is the record of entry base+1+i.
	pos  []walPos
	base uint64

	// The writer's own: the base's term and the last HardState written,
	// for the header of the next segment; the checksum of the active
	// segment's last record, which the next one continues; the snapshot
	// being installed (see markSnapshot), carried into new segments until
	// a marker at or past it; a scratch buffer.
	baseTerm uint64
	hs       raftpb.HardState
	crc      uint32
	intent   walMark
	buf      []byte

	// spare receives the outcome of preparing the next segment's file
	// (nil, or an error) while preparing; nil otherwise. spareBytes (under
	// mu) is its size on disk, for bytes.
	spare      chan error
	spareBytes int64

	// observeSync, if set, is told how long each fsync of a segment took
	// (Config.ObserveFsync).
	observeSync func(time.Duration)
}

// walState is the log as replay recovered it (or as a new log starts).
type walState struct {
	hs             raftpb.HardState
	base, baseTerm uint64
	last           uint64
	// runs are the terms of the entries (base, last], as in logIndex.
	runs []termRun
	// intent is the pending walSnapshot, if any.
	intent walMark
}

// walTorn is a torn write found at the end of a segment: [off, end) of
// path, to be cleared.
type walTorn struct {
	path     string
	off, end int64
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

func (w *wal) path(seq uint64) string { return w.fs.PathJoin(w.dir, walName(seq)) }

// openWAL replays the segments in dir. fresh is the state to start from
// when there are none (a new store, or one whose log was in Pebble); it is
// written as the first segment's header. A torn write at the end of the
// newest segment is cleared, and logged to logger (nil discards).
func openWAL(fs vfs.FS, dir string, fresh walState, logger *slog.Logger) (*wal, walState, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := fs.MkdirAll(dir, 0o700); err != nil {
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
	w := &wal{fs: fs, dir: dir, logger: logger}
	// A spare left by a crash may be only partly filled.
	if spare := fs.PathJoin(dir, walSpareName); exists(fs, spare) {
		if err := fs.Remove(spare); err != nil {
			return nil, walState{}, err
		}
	}
	st, next := fresh, uint64(1)
	if len(seqs) > 0 {
		var torn []walTorn
		if st, torn, err = w.replay(seqs); err == nil {
			for _, t := range torn {
				if err = w.clearTorn(t); err != nil {
					break
				}
			}
		}
		if err != nil {
			_ = w.close()
			return nil, walState{}, err
		}
		next = seqs[len(seqs)-1] + 1
	}
	w.base, w.baseTerm, w.hs, w.intent = st.base, st.baseTerm, st.hs, st.intent
	// Append to a new segment, never after a record that may be torn.
	if err := w.rotate(walCompact, st.base, st.baseTerm, next); err != nil {
		_ = w.close()
		return nil, walState{}, err
	}
	return w, st, nil
}

// replay reads every segment, rebuilding the log's bounds, terms, record
// positions and pending snapshot intent. It returns the torn writes that
// end segments, to be cleared.
func (w *wal) replay(seqs []uint64) (walState, []walTorn, error) {
	var st walState
	var terms []uint64 // terms[i]: entry base+1+i
	var torn []walTorn
	// gap is set while entries are missing before the first one held (the
	// segments holding them were deleted, or a torn write lost them); a
	// later walCompact must cover them.
	var gap error
	for i, seq := range seqs {
		path := w.path(seq)
		f, err := w.fs.Open(path)
		if err != nil {
			return st, nil, err
		}
		seg := &walSegment{seq: seq, f: f}
		w.segs = append(w.segs, seg)
		data, err := readAll(f)
		if err != nil {
			return st, nil, err
		}
		r, err := readSegment(path, seq, data, i == len(seqs)-1, func(off int64, typ byte, payload []byte, seed uint32) error {
			switch typ {
			case walEntry:
				var e raftpb.Entry
				if err := e.Unmarshal(payload); err != nil {
					return corruptAt(path, off, "an entry record that does not decode: %v", err)
				}
				seg.maxIndex = max(seg.maxIndex, e.Index)
				if e.Index <= st.base {
					return nil
				}
				last := st.base + uint64(len(terms))
				if e.Index > last+1 {
					// Keep the newer entries, forget the rest.
					gap = corruptAt(path, off, "entry %d follows entry %d: the entries between them are missing", e.Index, last)
					st.base = e.Index - 1
					st.baseTerm = 0
					terms, w.pos = terms[:0], w.pos[:0]
				}
				k := int(e.Index - st.base - 1)
				terms = append(terms[:k], e.Term)
				w.pos = append(w.pos[:k], walPos{seg: seq, off: off, n: uint32(len(payload)), seed: seed})
			case walHardState:
				if err := st.hs.Unmarshal(payload); err != nil {
					return corruptAt(path, off, "a hard state record that does not decode: %v", err)
				}
			case walCompact, walReset, walSnapshot:
				if len(payload) != 16 {
					return corruptAt(path, off, "a marker record of %d bytes", len(payload))
				}
				index := binary.LittleEndian.Uint64(payload)
				term := binary.LittleEndian.Uint64(payload[8:])
				if typ == walSnapshot {
					st.intent = walMark{index, term}
					return nil
				}
				if index >= st.intent.index {
					st.intent = walMark{}
				}
				last := st.base + uint64(len(terms))
				switch {
				case typ == walReset || index >= last:
					terms, w.pos = terms[:0], w.pos[:0]
					st.base, st.baseTerm = index, term
					gap = nil
				case index >= st.base:
					drop := int(index - st.base)
					terms = append(terms[:0], terms[drop:]...)
					w.pos = append(w.pos[:0], w.pos[drop:]...)
					st.base, st.baseTerm = index, term
					gap = nil
				}
			case walSynced:
				// Read by tornWrite only, when a record before it fails.
				if len(payload) != 8 {
					return corruptAt(path, off, "a synced record of %d bytes", len(payload))
				}
			default:
				return corruptAt(path, off, "a record of unknown type %d", typ)
			}
			return nil
		})
		if err != nil {
			return st, nil, err
		}
		seg.size, seg.chained = r.end, r.chained
		if r.torn {
			torn = append(torn, walTorn{path: path, off: r.end, end: r.dataEnd})
		}
		// A preallocated segment holds more than its records on disk.
		seg.alloc = int64(len(data))
	}
	if gap != nil {
		return st, nil, gap
	}
	st.last = st.base + uint64(len(terms))
	for i, t := range terms {
		if n := len(st.runs); n == 0 || st.runs[n-1].term != t {
			st.runs = append(st.runs, termRun{st.base + 1 + uint64(i), t})
		}
	}
	return st, torn, nil
}

func readAll(f vfs.File) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	data := make([]byte, fi.Size())
	n, err := f.ReadAt(data, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return data[:n], nil
}

// clearTorn overwrites a torn write with zeros, synced, before anything
// newer is written: the segment then ends where its intact records do, as
// a segment must once a newer one exists.
func (w *wal) clearTorn(t walTorn) error {
	f, err := w.fs.OpenReadWrite(t.path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	zeros := make([]byte, min(t.end-t.off, 1<<20))
	for off := t.off; off < t.end && err == nil; {
		n := min(int64(len(zeros)), t.end-off)
		_, err = f.WriteAt(zeros[:n], off)
		off += n
	}
	if err == nil {
		err = syncFile(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("storage: clearing the torn write at the end of %s: %w", t.path, err)
	}
	w.logger.Warn("raft log: dropped a torn write, left by a crash, from the end of a segment",
		"file", t.path, "offset", t.off, "bytes", t.end-t.off)
	return nil
}

// segmentRead is what readSegment found.
type segmentRead struct {
	chained bool
	// end follows the last intact record; dataEnd the last byte that is
	// not zero.
	end, dataEnd int64
	// torn: [end, dataEnd) is a torn write.
	torn bool
}

// readSegment calls fn for each intact record of segment seq (its data,
// read from path), in order, with the chain's value before the record. It
// ends where only zeros are left (a preallocated file's unused space). A
// record that is not intact ends the segment as a torn write when
// tornWrite says it can be one and the segment can end in one: the newest
// segment (being written when a crash came), or a segment of the first
// format, whose writer never cleared torn writes. Any other is damage, and
// readSegment returns an error that wraps ErrCorrupt.
func readSegment(path string, seq uint64, data []byte, newest bool, fn func(off int64, typ byte, payload []byte, seed uint32) error) (segmentRead, error) {
	r := segmentRead{dataEnd: nonZeroEnd(data)}
	var off int64
	var seed uint32
	// A chained segment starts with a walVersion record in the first
	// format's layout.
	if h, bad := recordAt(data, 0, false, 0); bad == "" && h.typ == walVersion {
		v := data[walHeaderLen : walHeaderLen+int64(h.n)]
		if len(v) != 12 {
			return r, corruptAt(path, 0, "a format record of %d bytes", len(v))
		}
		if format := binary.LittleEndian.Uint32(v); format != walFormatChained {
			return r, corruptAt(path, 0, "unknown log format %d", format)
		}
		if s := binary.LittleEndian.Uint64(v[4:]); s != seq {
			return r, corruptAt(path, 0, "the file says it is segment %s", walName(s))
		}
		r.chained, seed, off = true, h.sum, walHeaderLen+int64(h.n)
	}
	for off < r.dataEnd {
		h, bad := recordAt(data, off, r.chained, seed)
		if bad != "" {
			why := tornWrite(data, off, r.dataEnd, r.chained, seed)
			if why == "" && (newest || !r.chained) {
				r.end, r.torn = off, true
				return r, nil
			}
			if why == "" {
				why = "only the newest segment can end in a torn write, and this one was synced whole before a newer one began"
			}
			return r, corruptAt(path, off, "%s, and it is not a write torn by a crash: %s", bad, why)
		}
		if !h.known {
			return r, corruptAt(path, off, "a record of unknown type %d", h.typ)
		}
		if err := fn(off, h.typ, data[off+walHeaderLen:off+walHeaderLen+int64(h.n)], seed); err != nil {
			return r, err
		}
		if r.chained {
			seed = h.sum
		}
		off += walHeaderLen + int64(h.n)
	}
	r.end = off
	return r, nil
}

// walHeader is a record's header as read.
type walHeader struct {
	typ byte   // without walTypeTag
	n   uint32 // payload length
	sum uint32 // checksum as stored
	// known: the type byte is one that a record of the format can have
	// (walVersion aside: it is read only at the start of a segment).
	known bool
}

// parseHeader reads the header at the start of b (at least walHeaderLen
// bytes) in the layout of the chained format or of the first.
func parseHeader(b []byte, chained bool) walHeader {
	if !chained {
		typ := b[8]
		return walHeader{typ: typ, n: binary.LittleEndian.Uint32(b), sum: binary.LittleEndian.Uint32(b[4:]),
			known: typ >= walEntry && typ <= walReset}
	}
	typ := b[0] &^ walTypeTag
	return walHeader{typ: typ, n: binary.LittleEndian.Uint32(b[1:]), sum: binary.LittleEndian.Uint32(b[5:]),
		known: b[0]&walTypeTag != 0 && typ >= walEntry && typ <= walSnapshot && typ != walVersion}
}

// recordSum is the checksum the record rec (header and payload) must
// carry: in the chained format one that continues from seed.
func recordSum(rec []byte, chained bool, seed uint32) uint32 {
	if !chained {
		return crc32.Checksum(rec[8:], castagnoli)
	}
	sum := crc32.Update(seed, castagnoli, rec[:5])
	return crc32.Update(sum, castagnoli, rec[walHeaderLen:])
}

// recordAt reads the header of the record at off of data, and says what
// is wrong with the record ("" if it is intact; its type is the caller's
// to check).
func recordAt(data []byte, off int64, chained bool, seed uint32) (walHeader, string) {
	size := int64(len(data))
	if off+walHeaderLen > size {
		return walHeader{}, "a record header cut short by the end of the file"
	}
	h := parseHeader(data[off:], chained)
	if h.n > walMaxRecord {
		return h, fmt.Sprintf("a record whose length field says %d bytes, more than any record holds", h.n)
	}
	end := off + walHeaderLen + int64(h.n)
	if end > size {
		return h, fmt.Sprintf("a record of %d bytes cut short by the end of the file", end-off)
	}
	if recordSum(data[off:end], chained, seed) != h.sum {
		return h, "a record that fails its checksum"
	}
	return h, ""
}

// tornWrite decides whether the record at off of a segment's data, which
// is not intact, can be a write that a crash tore, and returns "" if so,
// else why not. seed is the chain's value before the record (chained).
//
// A torn write leaves the record's length as written, or a part of it
// (a part in a sector the disk did not write reads as zeros); it leaves no
// record of the log that says the segment was synced past it (such records
// tell what was synced before they were written, and nothing is written
// after a sync in a torn write that is not torn too); and it leaves a mark
// of the crash on the record: the file ends inside it, or nothing but zeros
// follow it, or a sector of it (from the record's start, where it begins
// inside one) reads as zeros. Damage to synced data shows none of these,
// unless it hits the last record written, or a record in the last synced
// write that holds a sector of zeros of its own.
func tornWrite(data []byte, off, dataEnd int64, chained bool, seed uint32) string {
	size := int64(len(data))
	if off+walHeaderLen > size {
		return ""
	}
	h := parseHeader(data[off:], chained)
	if h.n > walMaxRecord {
		return "a crash does not make a length field larger"
	}
	end := off + walHeaderLen + int64(h.n)
	stop := min(end, size)
	// A segment whose format record is damaged is read as one of the
	// first format: its records may be of either.
	layouts := []bool{chained}
	if off == 0 && !chained {
		layouts = append(layouts, true)
	}
	for _, c := range layouts {
		if p, ok := recordInside(data, off, stop, c, h.sum); ok {
			return fmt.Sprintf("a record of the log starts inside it, at offset %d, so its length field is damaged", p)
		}
		if c && end <= size {
			if p, synced, ok := syncedPast(data, off, end, dataEnd, chained, seed, h.sum); ok {
				return fmt.Sprintf("the record at offset %d says that the file had been synced up to offset %d", p, synced)
			}
		}
	}
	if end > size || end >= dataEnd || lostSector(data, off, stop) {
		return ""
	}
	return "data follows it, and no sector of it reads as zeros, as one that a crash left unwritten would"
}

// recordInside looks for an intact record (continuing the chain from
// seed) that starts inside the record at off, which would end at stop: the
// record there must then be longer than its length field says.
func recordInside(data []byte, off, stop int64, chained bool, seed uint32) (int64, bool) {
	size := int64(len(data))
	budget := int64(walScanBudget)
	for p := off + 1; p < stop && p+walHeaderLen <= size; p++ {
		h := parseHeader(data[p:], chained)
		if !h.known || h.n > walMaxRecord {
			continue
		}
		end := p + walHeaderLen + int64(h.n)
		if end > size {
			continue
		}
		if budget -= end - p; budget < 0 {
			return 0, false
		}
		if recordSum(data[p:end], chained, seed) == h.sum {
			return p, true
		}
	}
	return 0, false
}

// syncedPast follows the chain from the record after the one at off (it
// ends at end) and looks for a walSynced record that says the file had
// been synced past off. The chain continues from the checksum the record at
// off carries or, if only that was damaged, from the one it should carry
// (seed is the chain before it; sameFormat is false when the record is a
// damaged walVersion record, read in the first format's layout).
func syncedPast(data []byte, off, end, dataEnd int64, sameFormat bool, seed, sum uint32) (at, synced int64, ok bool) {
	seeds := []uint32{sum}
	if want := recordSum(data[off:end], sameFormat, seed); want != sum {
		seeds = append(seeds, want)
	}
	for _, s := range seeds {
		for p := end; p < dataEnd; {
			h, bad := recordAt(data, p, true, s)
			if bad != "" || !h.known {
				break
			}
			next := p + walHeaderLen + int64(h.n)
			if h.typ == walSynced && h.n == 8 {
				if n := int64(binary.LittleEndian.Uint64(data[p+walHeaderLen:])); n > off {
					return p, n, true
				}
			}
			s, p = h.sum, next
		}
	}
	return 0, 0, false
}

// lostSector reports whether a sector of the record at off (which would
// end at stop) reads as zeros from where the record starts in it to the
// sector's end (or the file's).
func lostSector(data []byte, off, stop int64) bool {
	size := int64(len(data))
	for s := off &^ (walSectorSize - 1); s < stop; s += walSectorSize {
		if allZero(data[max(off, s):min(s+walSectorSize, size)]) {
			return true
		}
	}
	return false
}

// nonZeroEnd returns the offset after the last byte of data that is not
// zero.
func nonZeroEnd(data []byte) int64 {
	n := len(data)
	for n >= 8 && binary.LittleEndian.Uint64(data[n-8:n]) == 0 {
		n -= 8
	}
	for n > 0 && data[n-1] == 0 {
		n--
	}
	return int64(n)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// appendRecord appends a record of the first format (unchained) to buf:
// the walVersion record that starts a chained segment, and tests' records
// of old segments.
func appendRecord(buf []byte, typ byte, payload []byte) []byte {
	start := len(buf)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(payload)))
	buf = append(buf, 0, 0, 0, 0, typ)
	buf = append(buf, payload...)
	sum := crc32.Checksum(buf[start+8:], castagnoli)
	binary.LittleEndian.PutUint32(buf[start+4:], sum)
	return buf
}

// appendMarker appends a marker record of the first format.
func appendMarker(buf []byte, typ byte, index, term uint64) []byte {
	var p [16]byte
	binary.LittleEndian.PutUint64(p[:], index)
	binary.LittleEndian.PutUint64(p[8:], term)
	return appendRecord(buf, typ, p[:])
}

// appendChained appends a record of the chained format, continuing the
// chain from seed, and returns buf and the record's checksum (the next
// record's seed).
func appendChained(buf []byte, seed uint32, typ byte, payload []byte) ([]byte, uint32) {
	start := len(buf)
	buf = append(buf, walTypeTag|typ, 0, 0, 0, 0, 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(buf[start+1:], uint32(len(payload)))
	buf = append(buf, payload...)
	return buf, sealRecord(buf[start:], seed)
}

// sealRecord puts in the record rec of the chained format (its header
// filled in but for the checksum, and its payload) its checksum, which
// continues from seed, and returns it.
func sealRecord(rec []byte, seed uint32) uint32 {
	sum := recordSum(rec, true, seed)
	binary.LittleEndian.PutUint32(rec[5:], sum)
	return sum
}

func appendChainedMarker(buf []byte, seed uint32, typ byte, index, term uint64) ([]byte, uint32) {
	var p [16]byte
	binary.LittleEndian.PutUint64(p[:], index)
	binary.LittleEndian.PutUint64(p[8:], term)
	return appendChained(buf, seed, typ, p[:])
}

// appendSyncedMark appends to buf, for the active segment, a walSynced
// record if a sync covered more of it than such a record says yet, and
// returns buf, the chain and what the segment's records will say.
func (w *wal) appendSyncedMark(buf []byte, seg *walSegment) ([]byte, uint32, int64) {
	if seg.synced <= seg.marked {
		return buf, w.crc, seg.marked
	}
	var p [8]byte
	binary.LittleEndian.PutUint64(p[:], uint64(seg.synced))
	buf, crc := appendChained(buf, w.crc, walSynced, p[:])
	return buf, crc, seg.synced
}

func (w *wal) active() *walSegment { return w.segs[len(w.segs)-1] }

func (w *wal) last() uint64 { return w.base + uint64(len(w.pos)) }

// rotate syncs the active segment, if any, and starts segment seq with its
// walVersion record, a marker (walCompact or walReset at index, term), the
// pending snapshot intent unless the marker is at or past it, and the last
// HardState, synced, its directory entry too.
func (w *wal) rotate(marker byte, index, term uint64, seq uint64) error {
	if len(w.segs) > 0 {
		if err := syncFile(w.active().f); err != nil {
			return err
		}
	}
	name := w.path(seq)
	f, prealloc, err := w.newSegmentFile(name)
	if err != nil {
		return err
	}
	var v [12]byte
	binary.LittleEndian.PutUint32(v[:], walFormatChained)
	binary.LittleEndian.PutUint64(v[4:], seq)
	buf := appendRecord(nil, walVersion, v[:])
	crc := binary.LittleEndian.Uint32(buf[4:])
	buf, crc = appendChainedMarker(buf, crc, marker, index, term)
	intent := w.intent
	if index >= intent.index {
		intent = walMark{}
	}
	if intent.index != 0 {
		buf, crc = appendChainedMarker(buf, crc, walSnapshot, intent.index, intent.term)
	}
	hb, err := w.hs.Marshal()
	if err == nil {
		buf, crc = appendChained(buf, crc, walHardState, hb)
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
	w.crc, w.intent = crc, intent
	w.mu.Lock()
	seg := &walSegment{seq: seq, f: f, size: int64(len(buf)), chained: true, prealloc: prealloc, synced: int64(len(buf))}
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

// syncSegment syncs f, a segment, timing it for observeSync.
func (w *wal) syncSegment(f vfs.File) error {
	if w.observeSync == nil {
		return syncFile(f)
	}
	start := time.Now()
	err := syncFile(f)
	w.observeSync(time.Since(start))
	return err
}

// segments returns how many segment files the log has.
func (w *wal) segments() int {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return len(w.segs)
}

// sync syncs the active segment.
func (w *wal) sync() error {
	seg := w.active()
	if err := w.syncSegment(seg.f); err != nil {
		return err
	}
	seg.synced = seg.size
	return nil
}

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
// and hs (unless nil) with one write, synced if sync. Entries at or below
// base must have been dropped by the caller.
func (w *wal) append(ents []raftpb.Entry, hs *raftpb.HardState, sync bool) error {
	if len(ents) == 0 && hs == nil {
		return nil
	}
	if seg := w.active(); seg.size >= walSegmentBytes || (!seg.prealloc && w.spareReady()) {
		if err := w.rotate(walCompact, w.base, w.baseTerm, seg.seq+1); err != nil {
			return err
		}
	}
	seg := w.active()
	if seg.size >= walSpareAfter {
		w.prepareSpare()
	}
	buf, crc, marked := w.appendSyncedMark(w.buf[:0], seg)
	var offs [64]walPos
	locs := offs[:0]
	for i := range ents {
		size := ents[i].Size()
		if size > walMaxRecord {
			return fmt.Errorf("storage: entry %d is %d bytes, more than a raft log record holds (%d)", ents[i].Index, size, walMaxRecord)
		}
		start := len(buf)
		buf = append(buf, walTypeTag|walEntry, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.LittleEndian.PutUint32(buf[start+1:], uint32(size))
		buf = slices.Grow(buf, size)[:len(buf)+size]
		if _, err := ents[i].MarshalToSizedBuffer(buf[start+walHeaderLen:]); err != nil {
			return err
		}
		locs = append(locs, walPos{seg: seg.seq, off: seg.size + int64(start), n: uint32(size), seed: crc})
		crc = sealRecord(buf[start:], crc)
	}
	if hs != nil {
		hb, err := hs.Marshal()
		if err != nil {
			return err
		}
		buf, crc = appendChained(buf, crc, walHardState, hb)
	}
	w.buf = buf
	if cap(w.buf) > 4<<20 {
		w.buf = nil // do not keep a huge buffer after a burst
	}
	if _, err := seg.f.Write(buf); err != nil {
		return err
	}
	w.crc, seg.marked = crc, marked
	size := seg.size + int64(len(buf))
	if sync {
		if err := w.syncSegment(seg.f); err != nil {
			return err
		}
		seg.synced = size
	}
	if hs != nil {
		w.hs = *hs
	}
	w.mu.Lock()
	seg.size = size
	if len(ents) > 0 {
		w.pos = append(w.pos[:ents[0].Index-w.base-1], locs...)
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
	path := w.path(p.seg)
	if seg == nil {
		return e, corruptAt(path, p.off, "the segment of entry %d is gone", index)
	}
	rec := make([]byte, walHeaderLen+int(p.n))
	if _, err := seg.f.ReadAt(rec, p.off); err != nil {
		return e, err
	}
	h, bad := recordAt(rec, 0, seg.chained, p.seed)
	if bad == "" && (h.typ != walEntry || !h.known) {
		bad = "not an entry record"
	}
	if bad != "" {
		return e, corruptAt(path, p.off, "entry %d: %s", index, bad)
	}
	if err := e.Unmarshal(rec[walHeaderLen:]); err != nil {
		return e, corruptAt(path, p.off, "entry %d does not decode: %v", index, err)
	}
	if e.Index != index {
		return e, corruptAt(path, p.off, "entry %d where %d belongs", e.Index, index)
	}
	return e, nil
}

// writeActive writes buf (records continuing the chain, to crc) to the
// active segment, whose synced marks will then say marked.
func (w *wal) writeActive(buf []byte, crc uint32, marked int64) error {
	seg := w.active()
	if _, err := seg.f.Write(buf); err != nil {
		return err
	}
	w.crc, seg.marked = crc, marked
	w.mu.Lock()
	seg.size += int64(len(buf))
	w.mu.Unlock()
	return nil
}

// compact records that entries up to index (of term) are gone and deletes
// the segments that hold nothing later. The caller has made the state
// machine durable at or past index first.
func (w *wal) compact(index, term uint64) error {
	buf, crc, marked := w.appendSyncedMark(w.buf[:0], w.active())
	buf, crc = appendChainedMarker(buf, crc, walCompact, index, term)
	if err := w.writeActive(buf, crc, marked); err != nil {
		return err
	}
	w.mu.Lock()
	drop := min(int(index-w.base), len(w.pos))
	w.pos = append(w.pos[:0], w.pos[drop:]...)
	w.base = index
	w.mu.Unlock()
	w.baseTerm = term
	if index >= w.intent.index {
		w.intent = walMark{}
	}
	return w.dropSegments(func(s *walSegment) bool { return s.maxIndex <= index })
}

// markSnapshot records, synced, that a snapshot at index (of term) is
// about to be installed in the state machine. The state is installed
// first and the log reset after (see reset), so a crash in between leaves
// a state ahead of the log: this record is how Open knows that it may
// reset the log to match (see reconcile), where otherwise the log lost
// entries and the node cannot be trusted. It stays pending, carried into
// new segments, until a marker at or past index.
func (w *wal) markSnapshot(index, term uint64) error {
	buf, crc, marked := w.appendSyncedMark(w.buf[:0], w.active())
	buf, crc = appendChainedMarker(buf, crc, walSnapshot, index, term)
	if err := w.writeActive(buf, crc, marked); err != nil {
		return err
	}
	w.intent = walMark{index, term}
	return w.sync()
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

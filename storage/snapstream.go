package storage

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/entry"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Snapshots of any size. Raft carries only a snapshot's metadata; the data
// travels beside it as a stream, is written by the receiver into sstables
// on disk as it arrives, and is installed with one atomic ingest:
//
//   - Snapshot (raft.Storage) answers from memory: the applied index, its
//     term and ConfState. Raft calls it under the driver's lock, so it does
//     no IO and copies nothing.
//   - OpenSnapshot is what a sender streams: one Pebble iterator, created at
//     once, pins a consistent view of the state range (the meta key, first
//     in the range, names the applied index it describes), read lazily as
//     the stream is consumed. Memory does not grow with the state.
//   - ReceiveSnapshot decodes a stream into sstables in a staging directory
//     (<db>/snapshots/<index>-<term>), checking every byte (framing, key
//     order and range, count and checksum, meta against the metadata),
//     synced and renamed into place only when whole.
//   - ApplySnapshot ingests the staged sstables and excises the old state
//     range in one Pebble version edit (IngestAndExcise): a crash leaves the
//     old state or the new, never a mix, and the applied index comes with
//     the state it describes (the meta key is in the ingested tables).
//
// Stream format ("KSS2"): magic, then for every key of the state range in
// order: uvarint key length (> 0), key, uvarint value length, value; then a
// uvarint 0, the number of pairs (u64 BE) and a CRC-32C (u32 BE) of
// everything before it.

var streamMagic = []byte("KSS2")

// Limits a receiver enforces before it allocates: keys are a few hundred
// bytes (namespace and key are capped by the API), values a record.
const (
	maxSnapshotKey   = 64 << 10
	maxSnapshotValue = 256 << 20
	// snapshotDir is the staging directory under the Pebble directory.
	snapshotDir = "snapshots"
)

// snapshotTableBytes is where a staged snapshot starts a new sstable (a
// variable for tests).
var snapshotTableBytes int64 = 128 << 20

// Snapshot implements raft.Storage: the metadata of the state as applied
// now. The data is not here: a sender streams it (OpenSnapshot), and may
// send a newer state than this one (never an older).
func (s *Store) Snapshot() (raftpb.Snapshot, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.meta.AppliedIndex == 0 {
		return raftpb.Snapshot{}, raft.ErrSnapshotTemporarilyUnavailable
	}
	return raftpb.Snapshot{
		Data: append([]byte(nil), streamMagic...),
		Metadata: raftpb.SnapshotMetadata{
			Index:     s.meta.AppliedIndex,
			Term:      s.meta.AppliedTerm,
			ConfState: s.confState,
		},
	}, nil
}

// OpenSnapshot returns the state machine as it stands, to be streamed to a
// follower: its metadata and a reader of the stream. The reader holds a
// consistent view until closed, whatever is applied meanwhile.
func (s *Store) OpenSnapshot() (raftpb.SnapshotMetadata, io.ReadCloser, error) {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return raftpb.SnapshotMetadata{}, nil, ErrClosed
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: stateStart, UpperBound: stateEnd})
	if err != nil {
		return raftpb.SnapshotMetadata{}, nil, err
	}
	md, err := func() (raftpb.SnapshotMetadata, error) {
		var md raftpb.SnapshotMetadata
		if !it.First() || string(it.Key()) != string(metaKey) {
			if err := it.Error(); err != nil {
				return md, err
			}
			return md, raft.ErrSnapshotTemporarilyUnavailable // nothing applied yet
		}
		meta := &statev1.Meta{}
		if err := proto.Unmarshal(it.Value(), meta); err != nil {
			return md, fmt.Errorf("%w: meta: %v", ErrCorrupt, err)
		}
		if meta.AppliedIndex == 0 {
			return md, raft.ErrSnapshotTemporarilyUnavailable
		}
		md.Index, md.Term = meta.AppliedIndex, meta.AppliedTerm
		if err := md.ConfState.Unmarshal(meta.ConfState); err != nil {
			return md, fmt.Errorf("%w: conf state: %v", ErrCorrupt, err)
		}
		return md, nil
	}()
	if err != nil {
		_ = it.Close()
		return md, nil, err
	}
	r := &snapshotReader{it: it, crc: crc32.New(castagnoli)}
	r.emit(streamMagic)
	return md, r, nil
}

// snapshotReader produces the stream of a snapshot from its iterator,
// a buffer at a time.
type snapshotReader struct {
	it    *pebble.Iterator
	buf   []byte
	off   int
	pairs uint64
	crc   hash.Hash32
	valid bool // it is at a pair not yet emitted
	done  bool // the footer is in buf
	err   error
}

// emit appends b to the buffer and the checksum.
func (r *snapshotReader) emit(b []byte) {
	r.buf = append(r.buf, b...)
	_, _ = r.crc.Write(b)
}

const snapshotReadBuf = 256 << 10

func (r *snapshotReader) fill() {
	if cap(r.buf) > 16<<20 {
		// A huge value passed through: do not keep its buffer. Values
		// up to a record's (1 MiB by default) reuse it: a new buffer per
		// fill was garbage as large as the state.
		r.buf = nil
	}
	r.buf, r.off = r.buf[:0], 0
	if r.pairs == 0 && !r.valid {
		r.valid = r.it.First()
	}
	var num [binary.MaxVarintLen64]byte
	for r.valid && len(r.buf) < snapshotReadBuf {
		k := r.it.Key()
		v, err := r.it.ValueAndErr()
		if err != nil {
			r.err = err
			return
		}
		r.emit(num[:binary.PutUvarint(num[:], uint64(len(k)))])
		r.emit(k)
		r.emit(num[:binary.PutUvarint(num[:], uint64(len(v)))])
		r.emit(v)
		r.pairs++
		r.valid = r.it.Next()
	}
	if r.valid {
		return
	}
	if err := r.it.Error(); err != nil {
		r.err = err
		return
	}
	r.emit([]byte{0})
	r.emit(binary.BigEndian.AppendUint64(nil, r.pairs))
	r.buf = binary.BigEndian.AppendUint32(r.buf, r.crc.Sum32())
	r.done = true
}

func (r *snapshotReader) Read(p []byte) (int, error) {
	for r.off == len(r.buf) {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		r.fill()
	}
	n := copy(p, r.buf[r.off:])
	r.off += n
	return n, nil
}

func (r *snapshotReader) Close() error {
	if r.it == nil {
		return nil
	}
	err := r.it.Close()
	r.it = nil
	return err
}

// stagedName is the staging directory of the snapshot at index, term.
func stagedName(index, term uint64) string {
	return fmt.Sprintf("%016x-%016x", index, term)
}

func parseStagedName(name string) (index, term uint64, ok bool) {
	a, b, found := strings.Cut(name, "-")
	if !found || len(a) != 16 || len(b) != 16 {
		return 0, 0, false
	}
	index, err1 := strconv.ParseUint(a, 16, 64)
	term, err2 := strconv.ParseUint(b, 16, 64)
	return index, term, err1 == nil && err2 == nil
}

// ReceiveSnapshot reads a snapshot stream for md from r and stages it on
// disk for ApplySnapshot, as sstables, synced. Nothing of the state machine
// changes. Memory does not grow with the snapshot's size.
func (s *Store) ReceiveSnapshot(md raftpb.SnapshotMetadata, r io.Reader) error {
	s.stageMu.Lock()
	defer s.stageMu.Unlock()
	s.mu.RLock()
	closed, applied := s.closed, s.meta.AppliedIndex
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if md.Index <= applied {
		return fmt.Errorf("storage: snapshot at %d is not newer than the applied index %d", md.Index, applied)
	}
	root := s.fs.PathJoin(s.dir, snapshotDir)
	if err := s.fs.MkdirAll(root, 0o700); err != nil {
		return err
	}
	// Staged snapshots older than this one will never be installed.
	s.dropStaged(func(index uint64) bool { return index < md.Index })
	final := s.fs.PathJoin(root, stagedName(md.Index, md.Term))
	if exists(s.fs, final) {
		// Already received whole (from another sender); drain nothing.
		return nil
	}
	return s.stageStream(root, final, r, md, nil)
}

// stageStream decodes the snapshot stream r for md into sstables in the
// directory final under root, through a temporary directory, synced; the
// caller holds stageMu. rewrite, if set, changes the meta (the stream's
// first pair) before it is staged (Restore).
func (s *Store) stageStream(root, final string, r io.Reader, md raftpb.SnapshotMetadata, rewrite func(*statev1.Meta)) (err error) {
	tmp := final + ".tmp"
	if err := s.fs.RemoveAll(tmp); err != nil {
		return err
	}
	if err := s.fs.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = s.fs.RemoveAll(tmp)
		}
	}()
	st := &stager{s: s, dir: tmp}
	defer st.abort()
	add := st.add
	if rewrite != nil {
		first := true
		add = func(k, v []byte) error {
			if !first {
				return st.add(k, v)
			}
			first = false
			meta := &statev1.Meta{}
			if err := proto.Unmarshal(v, meta); err != nil {
				return fmt.Errorf("%w: snapshot meta: %v", ErrCorrupt, err)
			}
			rewrite(meta)
			b, err := marshal.Marshal(meta)
			if err != nil {
				return err
			}
			return st.add(k, b)
		}
	}
	if err := decodeStream(r, md, add); err != nil {
		return err
	}
	if err := st.finish(); err != nil {
		return err
	}
	if err := syncDir(s.fs, tmp); err != nil {
		return err
	}
	if err := s.fs.Rename(tmp, final); err != nil {
		return err
	}
	return syncDir(s.fs, root)
}

// stager writes a snapshot's pairs into sstables, a new one every
// snapshotTableBytes.
type stager struct {
	s     *Store
	dir   string
	w     *sstable.Writer
	n     int
	bytes int64
}

func (st *stager) add(k, v []byte) error {
	if st.w == nil {
		f, err := st.s.fs.Create(st.s.fs.PathJoin(st.dir, fmt.Sprintf("%06d.sst", st.n)), vfs.WriteCategoryUnspecified)
		if err != nil {
			return err
		}
		st.n++
		st.w = sstable.NewWriter(objstorageprovider.NewFileWritable(f), st.s.opts.MakeWriterOptions(6, st.s.db.TableFormat()))
		st.bytes = 0
	}
	if err := st.w.Set(k, v); err != nil {
		return fmt.Errorf("%w: snapshot pair: %v", ErrCorrupt, err)
	}
	st.bytes += int64(len(k) + len(v))
	if st.bytes >= snapshotTableBytes {
		return st.finish()
	}
	return nil
}

// finish closes (and syncs) the table being written.
func (st *stager) finish() error {
	if st.w == nil {
		return nil
	}
	w := st.w
	st.w = nil
	return w.Close()
}

func (st *stager) abort() {
	if st.w != nil {
		_ = st.w.Close()
		st.w = nil
	}
}

// decodeStream checks a snapshot stream whole and hands its pairs to fn as
// they arrive (fn must not keep them). Keys must be in the state range and
// strictly increasing, the first being the meta key, whose applied index
// and term must be md's. The stream is refused, with ErrCorrupt, at the
// first byte that breaks a rule; fn may have seen pairs before that.
func decodeStream(r io.Reader, md raftpb.SnapshotMetadata, fn func(k, v []byte) error) error {
	crc := crc32.New(castagnoli)
	br := &hashReader{r: bufio.NewReaderSize(r, 64<<10), h: crc}
	var magic [4]byte
	if _, err := io.ReadFull(br, magic[:]); err != nil || string(magic[:]) != string(streamMagic) {
		if err != nil && !isEOF(err) {
			return err
		}
		return fmt.Errorf("%w: snapshot stream magic", ErrCorrupt)
	}
	var key, val, prev []byte
	var pairs uint64
	sawMeta := false
	for {
		kn, err := binary.ReadUvarint(br)
		if err != nil {
			return streamErr(err)
		}
		if kn == 0 {
			break
		}
		if kn > maxSnapshotKey {
			return fmt.Errorf("%w: snapshot key of %d bytes", ErrCorrupt, kn)
		}
		key = grow(key, int(kn))
		if _, err := io.ReadFull(br, key); err != nil {
			return streamErr(err)
		}
		vn, err := binary.ReadUvarint(br)
		if err != nil {
			return streamErr(err)
		}
		if vn > maxSnapshotValue {
			return fmt.Errorf("%w: snapshot value of %d bytes", ErrCorrupt, vn)
		}
		val = grow(val, int(vn))
		if _, err := io.ReadFull(br, val); err != nil {
			return streamErr(err)
		}
		if string(key) < string(stateStart) || string(key) >= string(stateEnd) {
			return fmt.Errorf("%w: snapshot key %s outside the state range", ErrCorrupt, keyDigest(key))
		}
		if pairs > 0 && string(key) <= string(prev) {
			return fmt.Errorf("%w: snapshot keys out of order at %x", ErrCorrupt, key)
		}
		if pairs == 0 {
			if string(key) != string(metaKey) {
				return fmt.Errorf("%w: snapshot does not start with its meta", ErrCorrupt)
			}
			meta := &statev1.Meta{}
			if err := proto.Unmarshal(val, meta); err != nil {
				return fmt.Errorf("%w: snapshot meta: %v", ErrCorrupt, err)
			}
			if meta.AppliedIndex != md.Index || meta.AppliedTerm != md.Term {
				return fmt.Errorf("%w: snapshot meta at %d/%d, metadata says %d/%d",
					ErrCorrupt, meta.AppliedIndex, meta.AppliedTerm, md.Index, md.Term)
			}
			// A state at a cluster version this binary cannot apply is
			// never staged, so never installed.
			if err := checkClusterVersion(fmt.Sprintf("the snapshot at %d", md.Index), entry.EffectiveVersion(meta.ClusterVersion)); err != nil {
				return err
			}
			sawMeta = true
		}
		if err := fn(key, val); err != nil {
			return err
		}
		prev = append(prev[:0], key...)
		pairs++
		if cap(val) > 4<<20 {
			val = nil
		}
	}
	var count [8]byte
	if _, err := io.ReadFull(br, count[:]); err != nil {
		return streamErr(err)
	}
	want := crc.Sum32()
	var sum [4]byte
	if _, err := io.ReadFull(br.r, sum[:]); err != nil {
		return streamErr(err)
	}
	if binary.BigEndian.Uint32(sum[:]) != want {
		return fmt.Errorf("%w: snapshot checksum", ErrCorrupt)
	}
	if _, err := br.r.ReadByte(); err == nil {
		return fmt.Errorf("%w: data after the end of the snapshot stream", ErrCorrupt)
	} else if !errors.Is(err, io.EOF) {
		return err
	}
	if got := binary.BigEndian.Uint64(count[:]); got != pairs {
		return fmt.Errorf("%w: snapshot has %d pairs; footer says %d", ErrCorrupt, pairs, got)
	}
	if !sawMeta {
		return fmt.Errorf("%w: snapshot without meta", ErrCorrupt)
	}
	return nil
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// streamErr turns a cut stream into ErrCorrupt; other read errors (the
// connection) stay as they are.
func streamErr(err error) error {
	if isEOF(err) {
		return fmt.Errorf("%w: snapshot stream cut short", ErrCorrupt)
	}
	return err
}

// hashReader hashes what it reads.
type hashReader struct {
	r *bufio.Reader
	h hash.Hash32
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	_, _ = h.h.Write(p[:n])
	return n, err
}

func (h *hashReader) ReadByte() (byte, error) {
	b, err := h.r.ReadByte()
	if err == nil {
		_, _ = h.h.Write([]byte{b})
	}
	return b, err
}

// staged returns the sstables of the staged snapshot at index, term.
func (s *Store) staged(index, term uint64) ([]string, error) {
	dir := s.fs.PathJoin(s.dir, snapshotDir, stagedName(index, term))
	names, err := s.fs.List(dir)
	if err != nil {
		return nil, fmt.Errorf("storage: snapshot %d/%d was not received: %w", index, term, err)
	}
	sort.Strings(names)
	var paths []string
	for _, n := range names {
		if strings.HasSuffix(n, ".sst") {
			paths = append(paths, s.fs.PathJoin(dir, n))
		}
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w: staged snapshot %d/%d holds no tables", ErrCorrupt, index, term)
	}
	return paths, nil
}

// dropStaged removes staged snapshots (and partial ones) whose index
// matches drop. Errors are only logged: a leftover costs disk, not safety.
func (s *Store) dropStaged(drop func(index uint64) bool) {
	root := s.fs.PathJoin(s.dir, snapshotDir)
	names, err := s.fs.List(root)
	if err != nil {
		return
	}
	for _, n := range names {
		index, _, ok := parseStagedName(strings.TrimSuffix(n, ".tmp"))
		if !ok || drop(index) {
			if err := s.fs.RemoveAll(s.fs.PathJoin(root, n)); err != nil {
				s.logger.Warn("removing a staged snapshot", "name", n, "err", err)
			}
		}
	}
}

// ApplySnapshot replaces the state machine with the staged snapshot named by
// snap's metadata (see ReceiveSnapshot) in one atomic ingest, then resets
// the log to start after it.
func (s *Store) ApplySnapshot(snap raftpb.Snapshot) error {
	md := snap.Metadata
	paths, err := s.staged(md.Index, md.Term)
	if err != nil {
		return err
	}
	// The filters describe the state being replaced: drop them (lookups go
	// to Pebble) and build anew from the snapshot's records.
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.filter.Store(nil)
	s.nextFilter.Store(nil)
	defer s.startFilterBuild()
	// The log learns first that a snapshot at md is being installed: if a
	// crash comes after the state and before the reset below, Open sees a
	// state ahead of the log and knows why (see reconcile).
	if err := s.wal.markSnapshot(md.Index, md.Term); err != nil {
		return fmt.Errorf("storage: apply snapshot: %w", err)
	}
	if err := s.guard(func() error {
		_, err := s.db.IngestAndExcise(context.Background(), paths, nil, nil, pebble.KeyRange{Start: stateStart, End: stateEnd})
		return err
	}); err != nil {
		return fmt.Errorf("storage: apply snapshot: ingest: %w", err)
	}
	meta := &statev1.Meta{}
	if ok, err := s.getProto(metaKey, protoValue{meta}); err != nil || !ok {
		return fmt.Errorf("%w: snapshot meta after ingest (found %v): %v", ErrCorrupt, ok, err)
	}
	if meta.AppliedIndex != md.Index || meta.AppliedTerm != md.Term {
		return fmt.Errorf("%w: snapshot meta at %d/%d, metadata says %d/%d",
			ErrCorrupt, meta.AppliedIndex, meta.AppliedTerm, md.Index, md.Term)
	}
	// The snapshot's cluster version may need a newer format record (a
	// crash before it is written: Open raises it).
	if err := s.raiseFormat(meta.ClusterVersion); err != nil {
		return fmt.Errorf("storage: apply snapshot: %w", err)
	}
	// The state first, then the log: a crash in between leaves a log
	// behind the state, which Open resets (reconcile); the other order
	// would leave a state behind the log's base, beyond repair.
	if err := s.wal.reset(md.Index, md.Term); err != nil {
		return fmt.Errorf("storage: apply snapshot: reset log: %w", err)
	}
	// Counted before the new applied index shows, so that whoever sees
	// the index sees the usage of the state it describes.
	if err := s.recountUsage(); err != nil {
		return fmt.Errorf("storage: apply snapshot: %w", err)
	}
	s.mu.Lock()
	s.log = logIndex{base: md.Index, baseTerm: md.Term, last: md.Index}
	s.tail.reset()
	s.meta = meta
	s.confState = md.ConfState
	s.mu.Unlock()
	s.dropStaged(func(index uint64) bool { return index <= md.Index })
	s.logger.Info("applied snapshot", "index", md.Index, "term", md.Term, "tables", len(paths),
		"records", meta.StoredRecords)
	s.watch.notifyAll()
	return nil
}

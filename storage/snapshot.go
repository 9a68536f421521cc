package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/cockroachdb/pebble/v2"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Snapshots. Because the state machine is a Pebble database, a snapshot is
// made on demand, when raft asks for one to send to a
// follower that fell behind the compacted log: a Pebble snapshot gives a
// consistent view of the state range, whose meta says which applied index
// and term (and ConfState) it reflects.
//
// Data format: the magic "KSS1"; then for every key in [stateStart,
// stateEnd) in order: uvarint key length, key, uvarint value length, value;
// then a footer: the number of pairs (u64 BE) and a CRC-32C (Castagnoli, u32
// BE) of everything before it. A cut or damaged snapshot fails the footer.
//
// NB: the whole snapshot is built in memory. That is fine for the record
// counts retention keeps (a 10k-record state is a few MB); streaming it in
// chunks is the next step when states grow to gigabytes.

var snapshotMagic = []byte("KSS1")

// Snapshot implements raft.Storage: the current state machine as a snapshot.
func (s *Store) Snapshot() (raftpb.Snapshot, error) {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	meta := &statev1.Meta{}
	v, closer, err := snap.Get(metaKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return raftpb.Snapshot{}, raft.ErrSnapshotTemporarilyUnavailable
	}
	if err != nil {
		return raftpb.Snapshot{}, err
	}
	err = proto.Unmarshal(v, meta)
	closer.Close()
	if err != nil {
		return raftpb.Snapshot{}, fmt.Errorf("%w: meta: %v", ErrCorrupt, err)
	}
	if meta.AppliedIndex == 0 {
		return raftpb.Snapshot{}, raft.ErrSnapshotTemporarilyUnavailable
	}
	var cs raftpb.ConfState
	if err := cs.Unmarshal(meta.ConfState); err != nil {
		return raftpb.Snapshot{}, fmt.Errorf("%w: conf state: %v", ErrCorrupt, err)
	}
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: stateStart, UpperBound: stateEnd})
	if err != nil {
		return raftpb.Snapshot{}, err
	}
	data := append([]byte(nil), snapshotMagic...)
	var pairs uint64
	for valid := it.First(); valid; valid = it.Next() {
		data = binary.AppendUvarint(data, uint64(len(it.Key())))
		data = append(data, it.Key()...)
		data = binary.AppendUvarint(data, uint64(len(it.Value())))
		data = append(data, it.Value()...)
		pairs++
	}
	if err := it.Close(); err != nil {
		return raftpb.Snapshot{}, err
	}
	data = binary.BigEndian.AppendUint64(data, pairs)
	data = binary.BigEndian.AppendUint32(data, crc32.Checksum(data, castagnoli))
	return raftpb.Snapshot{
		Data: data,
		Metadata: raftpb.SnapshotMetadata{
			Index:     meta.AppliedIndex,
			Term:      meta.AppliedTerm,
			ConfState: cs,
		},
	}, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const snapshotFooterLen = 12

// decodeSnapshot checks snapshot data whole (magic, footer checksum, pair
// count) and walks its key-value pairs. fn sees no pair of data that fails.
func decodeSnapshot(data []byte, fn func(k, v []byte) error) error {
	if len(data) < len(snapshotMagic)+snapshotFooterLen || string(data[:len(snapshotMagic)]) != string(snapshotMagic) {
		return fmt.Errorf("%w: snapshot magic", ErrCorrupt)
	}
	body := data[:len(data)-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(data[len(data)-4:]) {
		return fmt.Errorf("%w: snapshot checksum", ErrCorrupt)
	}
	want := binary.BigEndian.Uint64(data[len(data)-snapshotFooterLen:])
	data = data[len(snapshotMagic) : len(data)-snapshotFooterLen]
	var got uint64
	next := func() ([]byte, error) {
		n, w := binary.Uvarint(data)
		if w <= 0 || n > uint64(len(data)-w) {
			return nil, fmt.Errorf("%w: snapshot framing", ErrCorrupt)
		}
		b := data[w : w+int(n)]
		data = data[w+int(n):]
		return b, nil
	}
	for len(data) > 0 {
		k, err := next()
		if err != nil {
			return err
		}
		v, err := next()
		if err != nil {
			return err
		}
		if string(k) < string(stateStart) || string(k) >= string(stateEnd) {
			return fmt.Errorf("%w: snapshot key %x outside the state range", ErrCorrupt, k)
		}
		if err := fn(k, v); err != nil {
			return err
		}
		got++
	}
	if got != want {
		return fmt.Errorf("%w: snapshot has %d pairs; footer says %d", ErrCorrupt, got, want)
	}
	return nil
}

// ApplySnapshot replaces the state machine with the snapshot's, in one
// synced batch, then resets the log to start after it.
func (s *Store) ApplySnapshot(snap raftpb.Snapshot) error {
	// The filters describe the state being replaced: drop them (lookups go
	// to Pebble) and build anew from the snapshot's records.
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.filter.Store(nil)
	s.nextFilter.Store(nil)
	defer s.startFilterBuild()
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(stateStart, stateEnd, nil); err != nil {
		return err
	}
	meta := &statev1.Meta{}
	err := decodeSnapshot(snap.Data, func(k, v []byte) error {
		if string(k) == string(metaKey) {
			if err := proto.Unmarshal(v, meta); err != nil {
				return fmt.Errorf("%w: snapshot meta: %v", ErrCorrupt, err)
			}
		}
		return b.Set(k, v, nil)
	})
	if err != nil {
		return err
	}
	md := snap.Metadata
	if meta.AppliedIndex != md.Index || meta.AppliedTerm != md.Term {
		return fmt.Errorf("%w: snapshot meta at %d/%d, metadata says %d/%d",
			ErrCorrupt, meta.AppliedIndex, meta.AppliedTerm, md.Index, md.Term)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("storage: apply snapshot: %w", err)
	}
	// The state first, then the log: a crash in between leaves a log
	// behind the state, which Open resets (reconcile); the other order
	// would leave a state behind the log's base, beyond repair.
	if err := s.wal.reset(md.Index, md.Term); err != nil {
		return fmt.Errorf("storage: apply snapshot: reset log: %w", err)
	}
	s.mu.Lock()
	s.log = logIndex{base: md.Index, baseTerm: md.Term, last: md.Index}
	s.tail.reset()
	s.meta = meta
	s.confState = md.ConfState
	s.mu.Unlock()
	s.logger.Info("applied snapshot", "index", md.Index, "term", md.Term, "bytes", len(snap.Data))
	s.watch.notifyAll()
	return nil
}

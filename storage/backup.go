package storage

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Backups and restores (docs/backup.md). A backup is the snapshot stream
// of OpenSnapshot, framed by package backup; a restore installs one into an
// empty store as the first state of a new cluster:
//
//   - OpenBackup is OpenSnapshot that also returns the meta the stream
//     starts with (log time, records, members), for the backup's header.
//   - Restore stages the stream as ReceiveSnapshot does, except that the
//     meta's ConfState and members are replaced by the new cluster's; then
//     installs it (ApplySnapshot: the log starts after the backup's index)
//     and writes a HardState at the backup's term with everything
//     committed. Raft then restarts from it as from any snapshot: the
//     node's first election is at a term above the backup's, so the log's
//     terms never go backwards.

// OpenBackup returns the state machine as it stands, as OpenSnapshot does,
// with the meta at its start (the caller's to keep). The reader holds a
// consistent view until closed.
func (s *Store) OpenBackup() (*statev1.Meta, raftpb.SnapshotMetadata, io.ReadCloser, error) {
	md, rc, err := s.OpenSnapshot()
	if err != nil {
		return nil, md, nil, err
	}
	// Peek at the stream's first pair, the meta; the bytes peeked are
	// returned again by the reader.
	br := bufio.NewReaderSize(rc, 64<<10)
	meta, err := peekMeta(br)
	if err != nil {
		_ = rc.Close()
		return nil, md, nil, err
	}
	if meta.AppliedIndex != md.Index || meta.AppliedTerm != md.Term {
		_ = rc.Close()
		return nil, md, nil, fmt.Errorf("%w: snapshot meta at %d/%d, metadata says %d/%d", ErrCorrupt, meta.AppliedIndex, meta.AppliedTerm, md.Index, md.Term)
	}
	return meta, md, struct {
		io.Reader
		io.Closer
	}{br, rc}, nil
}

// peekMeta decodes the meta at the start of a snapshot stream without
// consuming it.
func peekMeta(br *bufio.Reader) (*statev1.Meta, error) {
	head, err := br.Peek(len(streamMagic) + 2*binary.MaxVarintLen64 + len(metaKey))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if len(head) < len(streamMagic) || string(head[:len(streamMagic)]) != string(streamMagic) {
		return nil, fmt.Errorf("%w: snapshot stream magic", ErrCorrupt)
	}
	off := len(streamMagic)
	kn, n := binary.Uvarint(head[off:])
	if n <= 0 || kn != uint64(len(metaKey)) || len(head) < off+n+int(kn) {
		return nil, fmt.Errorf("%w: snapshot does not start with its meta", ErrCorrupt)
	}
	off += n
	if string(head[off:off+int(kn)]) != string(metaKey) {
		return nil, fmt.Errorf("%w: snapshot does not start with its meta", ErrCorrupt)
	}
	off += int(kn)
	vn, n := binary.Uvarint(head[off:])
	if n <= 0 || vn > maxSnapshotValue {
		return nil, fmt.Errorf("%w: snapshot meta length", ErrCorrupt)
	}
	off += n
	if need := off + int(vn); need > br.Size() {
		return nil, fmt.Errorf("%w: snapshot meta of %d bytes", ErrCorrupt, vn)
	}
	all, err := br.Peek(off + int(vn))
	if err != nil {
		return nil, fmt.Errorf("%w: snapshot meta: %v", ErrCorrupt, err)
	}
	meta := &statev1.Meta{}
	if err := proto.Unmarshal(all[off:], meta); err != nil {
		return nil, fmt.Errorf("%w: snapshot meta: %v", ErrCorrupt, err)
	}
	return meta, nil
}

// ErrNotEmpty is returned by Restore into a store that holds a log or a
// state.
var ErrNotEmpty = errors.New("storage: the store is not empty")

// Restore installs the snapshot stream r, the state at index and term,
// into this store, which must be empty, as the state of a new cluster
// whose configuration is cs and whose members are members: they replace
// the ones the stream's meta names, and everything else (records, expiry
// index, log time, applied index and term) is kept byte for byte. The
// stream is checked whole (framing, key order and range, meta at index and
// term, count, CRC, and whatever r checks before it returns io.EOF) before
// anything is installed. Afterwards the log is empty and starts after
// index, and the HardState is at term with index committed, so the node
// restarts from the snapshot as raft expects.
func (s *Store) Restore(r io.Reader, index, term uint64, cs raftpb.ConfState, members []*statev1.Member) (err error) {
	s.mu.RLock()
	empty := !s.closed && s.meta.AppliedIndex == 0 && s.log.last == 0 && raft.IsEmptyHardState(s.hs)
	closed := s.closed
	s.mu.RUnlock()
	switch {
	case closed:
		return ErrClosed
	case !empty:
		return ErrNotEmpty
	case index == 0 || term == 0:
		return fmt.Errorf("storage: restore at index %d, term %d", index, term)
	}
	csb, err := cs.Marshal()
	if err != nil {
		return err
	}
	md := raftpb.SnapshotMetadata{Index: index, Term: term, ConfState: cs}
	if err := s.stageRewritten(r, md, func(meta *statev1.Meta) {
		meta.ConfState = csb
		meta.Members = members
	}); err != nil {
		return fmt.Errorf("storage: restore: %w", err)
	}
	if err := s.ApplySnapshot(raftpb.Snapshot{Metadata: md}); err != nil {
		return fmt.Errorf("storage: restore: %w", err)
	}
	// The snapshot's index is committed (it was applied), and raft must
	// restart at its term or later: an election at a lower term would
	// append entries below the log's last term.
	if err := s.Append(raftpb.HardState{Term: term, Commit: index}, nil, true); err != nil {
		return fmt.Errorf("storage: restore: %w", err)
	}
	s.logger.Info("restored a backup", "index", index, "term", term, "records", s.StoredRecords())
	return nil
}

// stageRewritten is ReceiveSnapshot with the meta pair passed through
// rewrite before it is staged, into a store that has nothing staged.
func (s *Store) stageRewritten(r io.Reader, md raftpb.SnapshotMetadata, rewrite func(*statev1.Meta)) error {
	s.stageMu.Lock()
	defer s.stageMu.Unlock()
	root := s.fs.PathJoin(s.dir, snapshotDir)
	if err := s.fs.MkdirAll(root, 0o700); err != nil {
		return err
	}
	s.dropStaged(func(uint64) bool { return true })
	return s.stageStream(root, s.fs.PathJoin(root, stagedName(md.Index, md.Term)), r, md, rewrite)
}

package storage

import (
	"github.com/cockroachdb/pebble/v2"
)

// TTL expiry. Every record has an entry in the expiry index (prefix 0x04,
// ordered by expires_at), written in the same batch as the record. The
// leader proposes Expire entries; applying one deletes, in index order, the
// records that expired by the entry's log time (see applyExpire). Because it
// runs through the log, every replica deletes the same records at the same
// log position; between sweeps, expired records are already invisible (Get
// and the rules judge expiry at log time).

// NextExpiry returns the earliest expires_at in the expiry index; ok is false
// when the index is empty.
func (s *Store) NextExpiry() (expiresAt int64, ok bool, err error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: expiryStart, UpperBound: expiryEnd})
	if err != nil {
		return 0, false, err
	}
	defer it.Close()
	if !it.First() {
		return 0, false, it.Error()
	}
	t, _, _, err := splitExpiryKey(it.Key())
	if err != nil {
		return 0, false, ErrCorrupt
	}
	return t, true, nil
}

// StoredRecords returns how many records are on disk, expired but not yet
// swept ones included.
func (s *Store) StoredRecords() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.meta.StoredRecords
}

// DiskUsage is what the database occupies on disk.
type DiskUsage struct {
	// Total is every file Pebble owns (tables, WAL, manifest, options)
	// and the Raft log's segments.
	Total uint64
	// Tables is the bytes in live sstables.
	Tables uint64
	// WAL is the bytes in Pebble's live write-ahead-log files.
	WAL uint64
	// RaftLog is the bytes in the Raft log's segment files.
	RaftLog uint64
	// Written is every byte ever written to the WAL since the store opened:
	// the work done, against which Total should stay flat.
	Written uint64
}

// DiskUsage reports the database's size on disk.
func (s *Store) DiskUsage() DiskUsage {
	m := s.db.Metrics()
	total := m.Total()
	raftLog := s.wal.bytes()
	return DiskUsage{
		Total:   m.DiskSpaceUsage() + raftLog,
		RaftLog: raftLog,
		Tables:  uint64(total.TablesSize),
		WAL:     m.WAL.PhysicalSize,
		Written: m.WAL.BytesWritten,
	}
}

package storage

import (
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// Usage is what one namespace holds in the store: its records (expired
// ones not yet swept included) and their bytes (key and encoded record).
// Quotas are judged by it (api).
type Usage struct {
	Records, Bytes int64
}

// usageTable is every namespace's Usage, derived from the state and kept
// in memory only: counted from the records when the store opens and when
// a snapshot replaces the state, then moved by each applied batch once it
// has committed. Being derived, it needs no format and no place in
// snapshots or checksums.
type usageTable struct {
	mu sync.RWMutex
	m  map[string]Usage
}

// NamespaceUsage returns what namespace ns holds, as of the last applied
// batch; zero unless the store counts usage (Config.CountUsage).
func (s *Store) NamespaceUsage(ns string) Usage {
	s.usage.mu.RLock()
	defer s.usage.mu.RUnlock()
	return s.usage.m[ns]
}

// add moves the table by the deltas of a committed batch.
func (t *usageTable) add(deltas map[string]Usage) {
	if len(deltas) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for ns, d := range deltas {
		u := t.m[ns]
		u.Records += d.Records
		u.Bytes += d.Bytes
		if u.Records <= 0 {
			delete(t.m, ns)
			continue
		}
		t.m[ns] = u
	}
}

// recountUsage counts every namespace's records in the database, if the
// store counts usage. The caller keeps apply out (Open, or holding
// applyMu).
func (s *Store) recountUsage() error {
	if !s.countsUsage {
		return nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecord}, UpperBound: []byte{prefixRecord + 1}})
	if err != nil {
		return err
	}
	m := make(map[string]Usage)
	for it.First(); it.Valid(); it.Next() {
		ns, _, err := splitRecordKey(it.Key())
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("%w: record key %s", ErrCorrupt, keyDigest(it.Key()))
		}
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return err
		}
		u := m[ns]
		u.Records++
		u.Bytes += int64(len(it.Key()) + len(v))
		m[ns] = u
	}
	if err := it.Close(); err != nil {
		return err
	}
	s.usage.mu.Lock()
	s.usage.m = m
	s.usage.mu.Unlock()
	return nil
}

// moveUsage adds to namespace ns's usage in the batch (nothing when the
// store does not count usage: the batch has no map then).
func (a *applyBatch) moveUsage(ns string, records, bytes int64) {
	if a.usage == nil {
		return
	}
	u := a.usage[ns]
	u.Records += records
	u.Bytes += bytes
	a.usage[ns] = u
}

// recordBytes is what a record at k counts for in Usage.Bytes.
func recordBytes(k []byte, r *statev1.Record) int64 {
	if r == nil {
		return 0
	}
	return int64(len(k) + proto.Size(r))
}

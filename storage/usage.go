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
	// Expired counts the namespace's records that expiry deleted since
	// the store opened (for metrics: it is not part of the state, and a
	// snapshot install does not reset it).
	Expired int64
}

// usageTable is every namespace's Usage, derived from the state and kept
// in memory only: counted from the records when the store opens and when
// a snapshot replaces the state, then moved by each applied batch once it
// has committed. Being derived, it needs no format and no place in
// snapshots or checksums.
type usageTable struct {
	mu sync.RWMutex
	m  map[string]Usage
	// expired is each namespace's Usage.Expired: kept apart from m, whose
	// entries go when a namespace holds nothing.
	expired map[string]int64
}

// NamespaceUsage returns what namespace ns holds, as of the last applied
// batch; zero unless the store counts usage (Config.CountUsage).
func (s *Store) NamespaceUsage(ns string) Usage {
	s.usage.mu.RLock()
	defer s.usage.mu.RUnlock()
	u := s.usage.m[ns]
	u.Expired = s.usage.expired[ns]
	return u
}

// EachNamespaceUsage calls fn with every namespace that holds records or
// had records expire, and its Usage, as of the last applied batch; it
// calls it for none unless the store counts usage. fn must not call the
// Store.
func (s *Store) EachNamespaceUsage(fn func(ns string, u Usage)) {
	s.usage.mu.RLock()
	defer s.usage.mu.RUnlock()
	for ns, u := range s.usage.m {
		u.Expired = s.usage.expired[ns]
		fn(ns, u)
	}
	for ns, n := range s.usage.expired {
		if _, ok := s.usage.m[ns]; !ok {
			fn(ns, Usage{Expired: n})
		}
	}
}

// add moves the table by the deltas of a committed batch.
func (t *usageTable) add(deltas map[string]Usage) {
	if len(deltas) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for ns, d := range deltas {
		if d.Expired != 0 {
			if t.expired == nil {
				t.expired = make(map[string]int64)
			}
			t.expired[ns] += d.Expired
		}
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

// expireUsage records that expiry deleted a record of namespace ns that
// counted bytes.
func (a *applyBatch) expireUsage(ns string, bytes int64) {
	a.moveUsage(ns, -1, -bytes)
	u := a.usage[ns]
	u.Expired++
	a.usage[ns] = u
}

// recordBytes is what a record at k counts for in Usage.Bytes.
func recordBytes(k []byte, r *statev1.Record) int64 {
	if r == nil {
		return 0
	}
	return int64(len(k) + proto.Size(r))
}

package storage

import (
	"errors"
	"hash/maphash"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// keyFilter is a Bloom filter over record keys. Nearly every Claim names a
// key that does not exist yet, and Pebble answers such a lookup only after
// searching every memtable and consulting every level's filters (a large
// share of a node's CPU under load: docs/performance-notes.md); a key the
// filter does not hold is certainly absent, so apply skips the lookup. A key it holds may or may not
// exist, and is looked up.
//
// The filter is a superset of the record keys: apply adds a key when it
// creates its record (before the batch commits; a batch that fails leaves
// an extra key, which is harmless) and never removes one, so deleted keys
// linger until the filter is rebuilt. Bits are set and read atomically: a
// filter being built (see Store.buildFilter) takes keys from the builder and
// from apply at once.
type keyFilter struct {
	seed     maphash.Seed
	words    []uint64
	blocks   uint64 // number of 512-bit blocks (a power of two)
	capacity int64  // keys it was sized for; past it, it is rebuilt
	added    atomic.Int64
}

const (
	// filterBitsPerKey and filterProbes: about 0.1% false positives at
	// capacity. The probes of a key fall in one 64-byte block (one cache
	// line: one memory access per lookup).
	filterBitsPerKey = 16
	filterProbes     = 6
	filterBlockWords = 8
)

// minFilterKeys is the least capacity a filter is built with (2 MiB).
// Tests lower it to force rebuilds.
var minFilterKeys int64 = 1 << 20

// newKeyFilter returns an empty filter for about twice records keys (room
// to grow before a rebuild).
func newKeyFilter(records uint64) *keyFilter {
	capacity := max(minFilterKeys, 2*int64(min(records, 1<<40)))
	need := max(1, uint64(capacity)*filterBitsPerKey/(64*filterBlockWords))
	blocks := uint64(1) << bits.Len64(need-1) // need rounded up to a power of two
	return &keyFilter{
		seed:     maphash.MakeSeed(),
		words:    make([]uint64, blocks*filterBlockWords),
		blocks:   blocks,
		capacity: capacity,
	}
}

// locate returns k's block (its first word) and the hash whose 9-bit
// slices are its bits in the block.
func (f *keyFilter) locate(k []byte) (block, slices uint64) {
	h := maphash.Bytes(f.seed, k)
	return (h & (f.blocks - 1)) * filterBlockWords, (h >> 32) * 0x9e3779b97f4a7c15
}

// add records that a record exists at key k.
func (f *keyFilter) add(k []byte) {
	block, h := f.locate(k)
	for range filterProbes {
		w, m := &f.words[block+(h&511)/64], uint64(1)<<(h&63)
		if atomic.LoadUint64(w)&m == 0 {
			atomic.OrUint64(w, m)
		}
		h >>= 9
	}
	f.added.Add(1)
}

// mayContain reports false only if no record exists at key k.
func (f *keyFilter) mayContain(k []byte) bool {
	block, h := f.locate(k)
	for range filterProbes {
		if atomic.LoadUint64(&f.words[block+(h&511)/64])&(uint64(1)<<(h&63)) == 0 {
			return false
		}
		h >>= 9
	}
	return true
}

// full reports whether the filter took more keys than it was sized for.
func (f *keyFilter) full() bool { return f.added.Load() > f.capacity }

// filters are the filters apply consults and feeds: cur answers lookups
// (nil: none yet, everything is looked up), next is being built and takes
// new keys too. Both are fixed for the duration of one Apply.
type filters struct{ cur, next *keyFilter }

func (fs filters) add(k []byte) {
	if fs.cur != nil {
		fs.cur.add(k)
	}
	if fs.next != nil {
		fs.next.add(k)
	}
}

// absent reports whether k certainly has no record.
func (fs filters) absent(k []byte) bool { return fs.cur != nil && !fs.cur.mayContain(k) }

// startFilterBuild asks the builder to build a new filter (at most one
// request waits).
func (s *Store) startFilterBuild() {
	select {
	case s.filterKick <- struct{}{}:
	default:
	}
}

// filterBuilder builds filters on request until the store closes.
func (s *Store) filterBuilder() {
	defer close(s.filterDone)
	for {
		select {
		case <-s.filterStop:
			return
		case <-s.filterKick:
		}
		err := s.buildFilter()
		if err == nil || errors.Is(err, errFilterStopped) {
			continue
		}
		// Meanwhile the current filter, if any, stays in use (still a
		// superset, only fuller); without one, lookups go to Pebble.
		s.logger.Warn("building the record key filter failed; retrying in a minute", "err", err)
		select {
		case <-s.filterStop:
			return
		case <-time.After(time.Minute):
			s.startFilterBuild()
		}
	}
}

var errFilterStopped = errors.New("storage: filter build stopped")

// buildFilter builds a filter of every record key and makes it current.
// Under applyMu (so no Apply is half done) it installs the new filter as
// the one being built, which every later Apply feeds, and takes a Pebble
// snapshot, which holds every record committed before; it then adds the
// snapshot's keys. A snapshot applied meanwhile (ApplySnapshot) discards
// the half-built filter.
func (s *Store) buildFilter() error {
	s.applyMu.Lock()
	s.mu.RLock()
	records, closed := s.meta.StoredRecords, s.closed
	s.mu.RUnlock()
	if closed {
		s.applyMu.Unlock()
		return errFilterStopped
	}
	f := newKeyFilter(records)
	s.nextFilter.Store(f)
	snap := s.db.NewSnapshot()
	s.applyMu.Unlock()

	err := func() error {
		defer snap.Close()
		it, err := snap.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecord}, UpperBound: []byte{prefixRecord + 1}})
		if err != nil {
			return err
		}
		n := 0
		for valid := it.First(); valid; valid = it.Next() {
			f.add(it.Key())
			if n++; n%4096 == 0 {
				select {
				case <-s.filterStop:
					_ = it.Close()
					return errFilterStopped
				default:
				}
			}
		}
		return it.Close()
	}()

	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if s.nextFilter.Load() != f {
		return nil // a snapshot replaced the state meanwhile; a new build follows
	}
	s.nextFilter.Store(nil)
	if err != nil {
		return err
	}
	s.filter.Store(f)
	s.stats.filterBuilds.Add(1)
	return nil
}

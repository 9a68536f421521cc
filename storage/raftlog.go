package storage

import (
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	"github.com/keystore-dev/keystore/internal/bugs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// This file implements raft.Storage over Pebble, plus the writes the Raft
// driver makes: Append (entries + HardState, one synced batch) and Compact.
//
// The log on disk is the entries (base, last]; base is the index of the last
// compacted entry (or of the last snapshot applied), whose term is kept so
// raft can match the entry before the first one. An in-memory logIndex
// mirrors the bounds and the terms, so Term, FirstIndex and LastIndex never
// touch the disk.

// termRun says that entries from index on (until the next run) have term.
type termRun struct{ index, term uint64 }

// logIndex mirrors the log's bounds and terms. Terms never decrease along
// the log, so a few runs describe any number of entries.
type logIndex struct {
	base, baseTerm uint64
	last           uint64
	runs           []termRun
}

func (l *logIndex) first() uint64 { return l.base + 1 }

// term returns the term of entry i, for base <= i <= last.
func (l *logIndex) term(i uint64) uint64 {
	if i == l.base {
		return l.baseTerm
	}
	n := sort.Search(len(l.runs), func(k int) bool { return l.runs[k].index > i })
	return l.runs[n-1].term
}

// truncateFrom forgets entries at index i and after.
func (l *logIndex) truncateFrom(i uint64) {
	n := sort.Search(len(l.runs), func(k int) bool { return l.runs[k].index >= i })
	l.runs = l.runs[:n]
	if i <= l.last {
		l.last = i - 1
	}
}

// append records entry (index, term), which must be last+1.
func (l *logIndex) append(index, term uint64) {
	if len(l.runs) == 0 || l.runs[len(l.runs)-1].term != term {
		l.runs = append(l.runs, termRun{index, term})
	}
	l.last = index
}

// compactTo makes i the new base.
func (l *logIndex) compactTo(i uint64) {
	l.baseTerm = l.term(i)
	l.base = i
	// Drop runs that end at or before the new first entry, keeping the run
	// that covers it.
	k := sort.Search(len(l.runs), func(k int) bool { return l.runs[k].index > i+1 })
	if k > 0 {
		k--
	}
	l.runs = append([]termRun(nil), l.runs[k:]...)
	if len(l.runs) > 0 && l.runs[0].index < i+1 {
		l.runs[0].index = i + 1
	}
	if l.last <= i {
		l.last, l.runs = i, nil
	}
}

func (s *Store) loadLog() error {
	if v, closer, err := s.db.Get(logBaseKey); err == nil {
		if len(v) != 16 {
			closer.Close()
			return fmt.Errorf("%w: log base", ErrCorrupt)
		}
		s.log.base = binary.BigEndian.Uint64(v)
		s.log.baseTerm = binary.BigEndian.Uint64(v[8:])
		closer.Close()
	} else if err != pebble.ErrNotFound {
		return err
	}
	s.log.last = s.log.base
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: entryStart, UpperBound: entryEnd})
	if err != nil {
		return err
	}
	defer it.Close()
	var e raftpb.Entry
	for valid := it.First(); valid; valid = it.Next() {
		if err := e.Unmarshal(it.Value()); err != nil {
			return fmt.Errorf("%w: entry: %v", ErrCorrupt, err)
		}
		if e.Index != s.log.last+1 {
			return fmt.Errorf("%w: log gap: entry %d after %d", ErrCorrupt, e.Index, s.log.last)
		}
		s.log.append(e.Index, e.Term)
	}
	return it.Error()
}

func encodeLogBase(index, term uint64) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 16), index)
	return binary.BigEndian.AppendUint64(b, term)
}

// InitialState implements raft.Storage. The ConfState is the one as of the
// applied index; raft re-delivers the committed entries after it.
func (s *Store) InitialState() (raftpb.HardState, raftpb.ConfState, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.hs, s.confState, nil
}

// entryCache holds the newest entries of the log, contiguous and ending at
// its last entry, within a byte budget: raft reads entries back soon after
// appending them (to apply them, and to send them to followers), and the
// cache spares those reads the disk.
type entryCache struct {
	ents  []raftpb.Entry
	bytes int
}

// tailCacheBytes bounds the entry cache.
const tailCacheBytes = 8 << 20

func (c *entryCache) reset() { clear(c.ents); c.ents, c.bytes = nil, 0 }

// append records ents (contiguous), replacing any cached entries at or
// after the first of them, then trims the oldest entries to the budget.
func (c *entryCache) append(ents []raftpb.Entry) {
	if len(ents) == 0 {
		return
	}
	if n := len(c.ents); n > 0 {
		first := c.ents[0].Index
		switch at := ents[0].Index; {
		case at <= first:
			c.reset()
		case at <= c.ents[n-1].Index+1:
			for _, e := range c.ents[at-first:] {
				c.bytes -= e.Size()
			}
			clear(c.ents[at-first:])
			c.ents = c.ents[:at-first]
		default:
			c.reset() // a gap: start over
		}
	}
	for i := range ents {
		c.ents = append(c.ents, ents[i])
		c.bytes += ents[i].Size()
	}
	drop := 0
	for drop < len(c.ents)-1 && c.bytes > tailCacheBytes {
		c.bytes -= c.ents[drop].Size()
		drop++
	}
	c.dropFront(drop)
}

// compactTo forgets entries at or below index.
func (c *entryCache) compactTo(index uint64) {
	if len(c.ents) == 0 || index < c.ents[0].Index {
		return
	}
	drop := min(int(index-c.ents[0].Index+1), len(c.ents))
	for _, e := range c.ents[:drop] {
		c.bytes -= e.Size()
	}
	c.dropFront(drop)
}

func (c *entryCache) dropFront(n int) {
	if n == 0 {
		return
	}
	clear(c.ents[:n])
	c.ents = c.ents[n:]
	if len(c.ents) == 0 {
		c.ents = nil
	}
}

// get returns copies of the entries [lo, hi) within maxSize (at least one),
// if the cache holds lo.
func (c *entryCache) get(lo, hi, maxSize uint64) ([]raftpb.Entry, bool) {
	if len(c.ents) == 0 || lo >= hi || lo < c.ents[0].Index || hi > c.ents[len(c.ents)-1].Index+1 {
		return nil, false
	}
	src := c.ents[lo-c.ents[0].Index : hi-c.ents[0].Index]
	var size uint64
	n := 0
	for n < len(src) {
		size += uint64(src[n].Size())
		if n > 0 && size > maxSize {
			break
		}
		n++
	}
	return append([]raftpb.Entry(nil), src[:n]...), true
}

// Entries implements raft.Storage.
func (s *Store) Entries(lo, hi, maxSize uint64) ([]raftpb.Entry, error) {
	s.mu.RLock()
	first, last := s.log.first(), s.log.last
	cached, ok := s.tail.get(lo, hi, maxSize)
	s.mu.RUnlock()
	if lo < first {
		return nil, raft.ErrCompacted
	}
	if hi > last+1 || lo > hi {
		return nil, raft.ErrUnavailable
	}
	if lo == hi {
		return nil, nil
	}
	if ok {
		return cached, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: entryKey(lo), UpperBound: entryKey(hi)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	ents := make([]raftpb.Entry, 0, min(hi-lo, 64))
	var size uint64
	next := lo
	for valid := it.First(); valid; valid = it.Next() {
		var e raftpb.Entry
		if err := e.Unmarshal(it.Value()); err != nil {
			return nil, fmt.Errorf("%w: entry: %v", ErrCorrupt, err)
		}
		if e.Index != next {
			// Compacted or truncated concurrently.
			break
		}
		size += uint64(e.Size())
		if len(ents) > 0 && size > maxSize {
			break
		}
		ents = append(ents, e)
		next++
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	if len(ents) == 0 {
		s.mu.RLock()
		defer s.mu.RUnlock()
		if lo < s.log.first() {
			return nil, raft.ErrCompacted
		}
		return nil, raft.ErrUnavailable
	}
	return ents, nil
}

// Term implements raft.Storage.
func (s *Store) Term(i uint64) (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if i < s.log.base {
		return 0, raft.ErrCompacted
	}
	if i > s.log.last {
		return 0, raft.ErrUnavailable
	}
	return s.log.term(i), nil
}

// LastIndex implements raft.Storage.
func (s *Store) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.log.last, nil
}

// FirstIndex implements raft.Storage.
func (s *Store) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.log.first(), nil
}

// Append persists new entries and the HardState in one batch, synced when
// sync is set (raft's Ready.MustSync). Entries after the last new entry,
// left over from an older term, are deleted in the same batch. Nothing that
// depends on these entries may be sent or acknowledged before Append returns.
func (s *Store) Append(hs raftpb.HardState, ents []raftpb.Entry, sync bool) error {
	s.mu.RLock()
	base, last := s.log.base, s.log.last
	s.mu.RUnlock()
	// Entries at or below base are covered by the snapshot already.
	for len(ents) > 0 && ents[0].Index <= base {
		ents = ents[1:]
	}
	if len(ents) > 0 && ents[0].Index > last+1 {
		return fmt.Errorf("storage: append: gap: entry %d after last %d", ents[0].Index, last)
	}
	if len(ents) == 0 && raft.IsEmptyHardState(hs) {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	for i := range ents {
		v, err := ents[i].Marshal()
		if err != nil {
			return err
		}
		if err := b.Set(entryKey(ents[i].Index), v, nil); err != nil {
			return err
		}
	}
	if n := len(ents); n > 0 && ents[n-1].Index < last {
		if err := b.DeleteRange(entryKey(ents[n-1].Index+1), entryKey(last+1), nil); err != nil {
			return err
		}
	}
	if !raft.IsEmptyHardState(hs) {
		v, err := hs.Marshal()
		if err != nil {
			return err
		}
		if err := b.Set(hardStateKey, v, nil); err != nil {
			return err
		}
	}
	opts := pebble.NoSync
	if sync && !bugs.NoFsync {
		opts = pebble.Sync
	}
	if err := b.Commit(opts); err != nil {
		return fmt.Errorf("storage: append: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(ents) > 0 {
		s.log.truncateFrom(ents[0].Index)
		for i := range ents {
			s.log.append(ents[i].Index, ents[i].Term)
		}
		s.tail.append(ents)
	}
	if !raft.IsEmptyHardState(hs) {
		s.hs = hs
	}
	return nil
}

// Compact discards the log up to and including index, which must be applied.
// The deletion need not be synced: it is ordered after the apply batches it
// depends on in Pebble's WAL, and a lost compaction only leaves a longer log.
func (s *Store) Compact(index uint64) error {
	s.mu.RLock()
	base, last, applied := s.log.base, s.log.last, s.meta.AppliedIndex
	var term uint64
	if index > base && index <= last {
		term = s.log.term(index)
	}
	s.mu.RUnlock()
	if index <= base {
		return raft.ErrCompacted
	}
	if index > last || index > applied {
		return fmt.Errorf("storage: compact %d beyond last %d or applied %d", index, last, applied)
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(entryKey(base+1), entryKey(index+1), nil); err != nil {
		return err
	}
	if err := b.Set(logBaseKey, encodeLogBase(index, term), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("storage: compact: %w", err)
	}
	s.mu.Lock()
	s.log.compactTo(index)
	s.tail.compactTo(index)
	s.mu.Unlock()
	return nil
}

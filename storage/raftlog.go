package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// This file implements raft.Storage over the log in wal.go, plus the writes
// the Raft driver makes: Append (entries + HardState, one synced write) and
// Compact.
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

// loadLog opens the log in the WAL directory, moving it there first from
// Pebble, where stores written before the WAL kept it. Then it checks the
// log against the state machine's applied position (see reconcile).
func (s *Store) loadLog(fs vfs.FS, dir string) error {
	fresh, inPebble, err := s.pebbleLog()
	if err != nil {
		return err
	}
	seqs, err := listWALIfExists(fs, dir)
	if err != nil {
		return err
	}
	if inPebble && len(seqs) == 0 {
		if err := s.migrateLog(fs, dir, fresh); err != nil {
			return fmt.Errorf("storage: moving the raft log out of pebble: %w", err)
		}
	}
	if fs == vfs.Default {
		// Errors name the log's files, for an operator to find.
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
	}
	w, st, err := openWAL(fs, dir, fresh, s.logger)
	if err != nil {
		return err
	}
	s.wal = w
	s.hs = st.hs
	s.log = logIndex{base: st.base, baseTerm: st.baseTerm, last: st.last, runs: st.runs}
	if inPebble {
		// Whether just moved or moved before a crash cut the clean-up.
		if err := s.dropPebbleLog(); err != nil {
			return err
		}
	}
	return s.reconcile()
}

// listWALIfExists lists dir's segments; none if dir does not exist.
func listWALIfExists(fs vfs.FS, dir string) ([]uint64, error) {
	if _, err := fs.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return listWAL(fs, dir)
}

// pebbleLog reads the log's base and HardState as stores written before
// the WAL kept them in Pebble. inPebble reports any log key there.
func (s *Store) pebbleLog() (st walState, inPebble bool, err error) {
	if v, closer, err := s.db.Get(logBaseKey); err == nil {
		if len(v) != 16 {
			closer.Close()
			return st, false, fmt.Errorf("%w: log base", ErrCorrupt)
		}
		st.base = binary.BigEndian.Uint64(v)
		st.baseTerm = binary.BigEndian.Uint64(v[8:])
		closer.Close()
		inPebble = true
	} else if err != pebble.ErrNotFound {
		return st, false, err
	}
	if ok, err := s.getProto(hardStateKey, &st.hs); err != nil {
		return st, false, err
	} else if ok {
		inPebble = true
	}
	st.last = st.base
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: entryStart, UpperBound: entryEnd})
	if err != nil {
		return st, false, err
	}
	if it.First() {
		inPebble = true
	}
	return st, inPebble, it.Close()
}

// migrateLog writes the log Pebble holds (its base and HardState are
// fresh) as a WAL in a directory beside dir, synced, and renames it to dir:
// a crash midway leaves no WAL at dir, and the next Open starts over (the
// Pebble keys go only once dir holds the whole log).
func (s *Store) migrateLog(fs vfs.FS, dir string, fresh walState) error {
	tmp := dir + ".tmp"
	if err := fs.RemoveAll(tmp); err != nil {
		return err
	}
	w, _, err := openWAL(fs, tmp, fresh, s.logger)
	if err != nil {
		return err
	}
	defer func() { _ = w.close() }()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: entryStart, UpperBound: entryEnd})
	if err != nil {
		return err
	}
	defer it.Close()
	var batch []raftpb.Entry
	last := fresh.base
	for valid := it.First(); valid; valid = it.Next() {
		var e raftpb.Entry
		if err := e.Unmarshal(it.Value()); err != nil {
			return fmt.Errorf("%w: entry: %v", ErrCorrupt, err)
		}
		if e.Index <= fresh.base {
			continue
		}
		if e.Index != last+1 {
			return fmt.Errorf("%w: log gap: entry %d after %d", ErrCorrupt, e.Index, last)
		}
		last = e.Index
		batch = append(batch, e)
		if len(batch) == 256 {
			if err := w.append(batch, nil, false); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	if err := w.append(batch, nil, false); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	if err := w.close(); err != nil {
		return err
	}
	if err := fs.RemoveAll(dir); err != nil { // an empty directory, if any
		return err
	}
	if err := fs.Rename(tmp, dir); err != nil {
		return err
	}
	if err := syncDir(fs, fs.PathDir(dir)); err != nil {
		return err
	}
	s.logger.Info("moved the raft log out of pebble", "first_index", fresh.base+1, "last_index", last)
	return nil
}

// dropPebbleLog deletes the log keys of stores written before the WAL.
func (s *Store) dropPebbleLog() error {
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(entryStart, entryEnd, nil); err != nil {
		return err
	}
	if err := b.Delete(logBaseKey, nil); err != nil {
		return err
	}
	if err := b.Delete(hardStateKey, nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// reconcile lines the log up with the state machine, which lives in
// another store (Pebble) and so may be ahead of it after a crash:
//   - a snapshot was installed in the state but the crash came before the
//     log was reset to start after it: reset it now. The log says so: a
//     pending walSnapshot record at exactly the applied index and term,
//     synced before the state was touched (see markSnapshot). A state
//     ahead of the log without one means the log lost synced entries: it
//     is reported as corruption, never reset over;
//   - entries were applied (in an unsynced batch that survived) past the
//     commit index in the HardState (in an unsynced record that did not):
//     what was applied was committed, so the commit index moves up to it.
//
// A state machine behind the log's base cannot be repaired: the entries it
// lacks are gone. Compact makes the state durable first so that this does
// not happen.
func (s *Store) reconcile() error {
	applied, appliedTerm := s.meta.AppliedIndex, s.meta.AppliedTerm
	intent := s.wal.intent
	if applied < intent.index {
		// The snapshot was not installed after all: raft sends another.
		s.wal.intent = walMark{}
	}
	if applied == 0 {
		return nil
	}
	if applied < s.log.base {
		return corruptLog(s.wal.dir, "the state machine has applied entries up to %d but the log starts after %d: the entries in between are gone", applied, s.log.base)
	}
	if applied > s.log.last || s.log.term(applied) != appliedTerm {
		if intent != (walMark{applied, appliedTerm}) {
			have := fmt.Sprintf("ends at entry %d", s.log.last)
			if applied <= s.log.last {
				have = fmt.Sprintf("holds entry %d of term %d", applied, s.log.term(applied))
			}
			return corruptLog(s.wal.dir, "the state machine has applied entry %d of term %d but the log %s, "+
				"and no record in the log says that a snapshot at %d was being installed: synced log entries are lost",
				applied, appliedTerm, have, applied)
		}
		s.logger.Warn("raft log: finishing a snapshot install that a crash interrupted: resetting the log to start after it",
			"applied", applied, "applied_term", appliedTerm, "log_last", s.log.last)
		if err := s.wal.reset(applied, appliedTerm); err != nil {
			return err
		}
		s.log = logIndex{base: applied, baseTerm: appliedTerm, last: applied}
	}
	if s.hs.Commit < applied {
		s.hs.Commit = applied
		hs := s.hs
		if err := s.wal.append(nil, &hs, true); err != nil {
			return err
		}
	}
	return nil
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
	return s.wal.entries(lo, hi, maxSize)
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

// Append persists new entries and the HardState with one write, synced when
// sync is set (raft's Ready.MustSync). Entries after the last new entry,
// left over from an older term, are replaced by it. Nothing that depends on
// these entries may be sent or acknowledged before Append returns.
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
	var hsp *raftpb.HardState
	if !raft.IsEmptyHardState(hs) {
		hsp = &hs
	}
	if err := s.wal.append(ents, hsp, sync); err != nil {
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
	if hsp != nil {
		s.hs = hs
	}
	return nil
}

// Compact discards the log up to and including index, which must be applied.
// It first syncs Pebble, so that the applied state outlives the entries; the
// compaction itself need not be synced (a lost one only leaves a longer
// log) until it deletes a segment.
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
	// The state machine must not be left behind the log's new base by a
	// crash: its unsynced batches are made durable first.
	if err := s.guard(func() error { return s.db.LogData(nil, pebble.Sync) }); err != nil {
		return fmt.Errorf("storage: compact: %w", err)
	}
	if err := s.wal.compact(index, term); err != nil {
		return fmt.Errorf("storage: compact: %w", err)
	}
	s.mu.Lock()
	s.log.compactTo(index)
	s.tail.compactTo(index)
	s.mu.Unlock()
	return nil
}

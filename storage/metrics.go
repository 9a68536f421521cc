package storage

import (
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Metrics is what the store reports for monitoring, read by a scrape.
type Metrics struct {
	// LogSegments and LogBytes are the Raft log's segment files and what
	// they occupy (preallocated space and the spare segment included).
	LogSegments int
	LogBytes    uint64
	// FilterBuilds counts the record key filter's completed builds since
	// open (the first, and each rebuild when it filled up or a snapshot
	// replaced the state).
	FilterBuilds uint64
	// WriteStalls counts the times Pebble made writes wait for
	// compactions.
	WriteStalls uint64
	// DiskBytes is what Pebble's files occupy (the log is apart).
	DiskBytes uint64
	// FSFreeBytes and FSTotalBytes are the space available to keystored
	// and the size of the filesystem holding the data dir (zeros where
	// the platform cannot tell).
	FSFreeBytes, FSTotalBytes uint64
	// Pebble is Pebble's own metrics (levels, compactions, memtables).
	Pebble *pebble.Metrics
}

// storeStats are the counters the store bumps.
type storeStats struct {
	filterBuilds, writeStalls atomic.Uint64
}

// Metrics returns the store's metrics; zero once it is closed.
func (s *Store) Metrics() Metrics {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return Metrics{}
	}
	pm := s.db.Metrics()
	free, total := fsSpace(s.dir)
	return Metrics{
		FSFreeBytes:  free,
		FSTotalBytes: total,
		LogSegments:  s.wal.segments(),
		LogBytes:     s.wal.bytes(),
		FilterBuilds: s.stats.filterBuilds.Load(),
		WriteStalls:  s.stats.writeStalls.Load(),
		DiskBytes:    pm.DiskSpaceUsage(),
		Pebble:       pm,
	}
}

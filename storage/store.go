package storage

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/entry"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Config configures a Store.
type Config struct {
	// Dir is the Pebble directory. Required. The Raft log is in its
	// subdirectory raftlog.
	Dir string
	// FS is the filesystem; nil means the operating system's. Tests pass
	// vfs.NewCrashableMem to simulate power loss.
	FS vfs.FS
	// Logger receives the store's logs; nil discards them.
	Logger *slog.Logger
	// Fatal is called when Pebble meets an error it cannot survive (a
	// failed MANIFEST write: it cannot tell what is on disk). It must not
	// return: keystored logs and exits, so that a restart recovers from
	// what the disk holds. nil panics, as a library must.
	Fatal func(msg string)
	// CountUsage keeps each namespace's Usage (usage.go) for quotas: it
	// costs a scan of every record at Open and after a snapshot install
	// (about half a second per million records from a cold disk), so it
	// is off unless a quota needs it.
	CountUsage bool
	// ObserveFsync, if set, is called with the duration of every fsync
	// of the Raft log's active segment (one per Ready that carries
	// entries or a HardState), from the goroutine that writes the log: it
	// must be quick (a histogram's Observe).
	ObserveFsync func(time.Duration)
}

// Validate reports a configuration error.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("storage: Dir is required")
	}
	return nil
}

// Store is one node's durable state: the Raft log (it implements
// raft.Storage), in segment files of its own (wal.go), and the replicated
// state machine, in a Pebble database. All methods are safe for concurrent
// use.
type Store struct {
	db     *pebble.DB
	opts   *pebble.Options
	fatal  func(msg string) // Config.Fatal
	fs     vfs.FS
	dir    string // Pebble's; the log and staged snapshots are beneath
	wal    *wal
	logger *slog.Logger

	// stageMu serializes snapshots being received (ReceiveSnapshot).
	stageMu sync.Mutex

	mu sync.RWMutex // guards the fields below
	// log is the in-memory index of the Raft log on disk.
	log logIndex
	// tail caches the log's newest entries, which raft reads back to
	// apply them and to send them to followers.
	tail entryCache
	hs   raftpb.HardState
	// meta is the state machine's applied position as last committed.
	meta *statev1.Meta
	// format is the on-disk format formatFile records (format.go); read
	// and raised under applyMu.
	format    int
	confState raftpb.ConfState
	closed    bool

	watch watchHub

	// applyMu is held by Apply and ApplySnapshot for their whole duration,
	// and by a filter build while it starts and ends (see buildFilter).
	applyMu sync.Mutex
	// filter holds every record key (nil until built); nextFilter is the
	// one being built. See keyfilter.go.
	filter, nextFilter atomic.Pointer[keyFilter]
	// usage is each namespace's records and bytes (usage.go), kept only
	// with countsUsage (Config.CountUsage).
	usage       usageTable
	countsUsage bool
	// stats are counters for monitoring (metrics.go).
	stats      *storeStats
	filterKick chan struct{} // asks filterBuilder for a build
	filterStop chan struct{} // closed by Close
	filterDone chan struct{} // closed when filterBuilder returned
}

var marshal = proto.MarshalOptions{Deterministic: true}

// cacheSize is Pebble's block cache: it keeps index and filter blocks (and
// the hot records) in memory. NB: the memtable stays at Pebble's 4 MiB
// default: a larger one holds more sweep tombstones, and under churn the
// disk grows by a WAL's worth at every flush (storage/DESIGN.md, Pebble
// settings; the trials are in docs/performance-notes.md).
const cacheSize = 64 << 20

// Open opens (or creates) the store in cfg.Dir and loads the log index,
// HardState and applied position.
func Open(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "storage")
	stats := new(storeStats)
	opts := &pebble.Options{
		FS: cfg.FS,
		// Snapshots are installed by IngestAndExcise (snapstream.go),
		// which needs virtual sstables. Opening a store written with an
		// older format ratchets it up, once.
		FormatMajorVersion: pebble.FormatVirtualSSTables,
		Logger:             pebbleLogger{l: logger, fatal: cfg.Fatal},
		CacheSize:          cacheSize,
		// What an operator needs to see when latency jumps.
		EventListener: &pebble.EventListener{
			WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
				stats.writeStalls.Add(1)
				logger.Warn("pebble write stall: writes wait for compactions", "reason", info.Reason)
			},
			WriteStallEnd: func() { logger.Warn("pebble write stall ended") },
			DiskSlow: func(info pebble.DiskSlowInfo) {
				logger.Warn("slow disk operation", "path", info.Path, "op", info.OpType.String(), "duration", info.Duration)
			},
			BackgroundError: func(err error) { logger.Error("pebble background error", "err", err) },
		},
	}
	for i := range opts.Levels {
		// Lookups of absent keys that the record key filter does not
		// answer (before its first build, deleted keys still in it) would
		// otherwise walk the index blocks of every level.
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		// Fewer, larger writes when compactions write tables (see DESIGN.md).
		opts.Levels[i].BlockSize = 32 << 10
	}
	opts.EnsureDefaults()
	format, err := checkFormat(opts.FS, cfg.Dir)
	if err != nil {
		return nil, err
	}
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", cfg.Dir, err)
	}
	s := &Store{
		db: db, opts: opts, dir: cfg.Dir, fatal: cfg.Fatal, logger: logger, meta: &statev1.Meta{}, countsUsage: cfg.CountUsage, stats: stats,
		filterKick: make(chan struct{}, 1), filterStop: make(chan struct{}), filterDone: make(chan struct{}),
	}
	fs := cfg.FS
	if fs == nil {
		fs = vfs.Default
	}
	s.fs = fs
	// A snapshot staged before a restart is not needed: raft asks again.
	s.dropStaged(func(uint64) bool { return true })
	if err := s.load(fs, fs.PathJoin(cfg.Dir, "raftlog")); err != nil {
		if s.wal != nil {
			_ = s.wal.close()
		}
		_ = db.Close()
		return nil, err
	}
	s.wal.observeSync = cfg.ObserveFsync
	if err := s.recountUsage(); err != nil {
		_ = s.wal.close()
		_ = db.Close()
		return nil, fmt.Errorf("storage: counting namespaces' records: %w", err)
	}
	// Downgrade protection: a state at a cluster version this binary
	// cannot apply was written by a newer keystore.
	if err := checkClusterVersion("the data dir "+cfg.Dir, entry.EffectiveVersion(s.meta.ClusterVersion)); err != nil {
		_ = s.wal.close()
		_ = db.Close()
		return nil, err
	}
	// A store without a format file gets one; one whose cluster version
	// needs a newer format than recorded (a crash between a snapshot's
	// install and its record) is raised.
	s.format = format
	if format == 0 {
		s.format = -1
	}
	if err := s.raiseFormat(s.meta.ClusterVersion); err != nil {
		_ = s.wal.close()
		_ = db.Close()
		return nil, err
	}
	go s.filterBuilder()
	s.startFilterBuild()
	return s, nil
}

func (s *Store) load(fs vfs.FS, logDir string) error {
	if _, err := s.getProto(metaKey, protoValue{s.meta}); err != nil {
		return err
	}
	if len(s.meta.ConfState) > 0 {
		if err := s.confState.Unmarshal(s.meta.ConfState); err != nil {
			return fmt.Errorf("%w: conf state: %v", ErrCorrupt, err)
		}
	}
	if err := s.loadLog(fs, logDir); err != nil {
		return err
	}
	s.logger.Info("opened",
		"first_index", s.log.first(), "last_index", s.log.last,
		"applied_index", s.meta.AppliedIndex, "commit", s.hs.Commit, "term", s.hs.Term)
	return nil
}

// Close closes the log and the database. Unsynced writes (apply batches)
// may be lost, as in a crash; the Raft log and HardState are always synced.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.filterStop)
	<-s.filterDone
	werr := s.wal.close()
	if err := s.db.Close(); err != nil {
		return err
	}
	return werr
}

// getProto reads key into m through the DB. It reports whether the key
// exists.
func (s *Store) getProto(key []byte, m unmarshaler) (bool, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer closer.Close()
	if err := m.Unmarshal(v); err != nil {
		return false, fmt.Errorf("%w: key %s: %v", ErrCorrupt, keyDigest(key), err)
	}
	return true, nil
}

type unmarshaler interface{ Unmarshal([]byte) error }

// protoValue adapts a protobuf message to unmarshaler.
type protoValue struct{ m proto.Message }

func (p protoValue) Unmarshal(b []byte) error { return proto.Unmarshal(b, p.m) }

// AppliedIndex returns the index of the last applied entry.
func (s *Store) AppliedIndex() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.meta.AppliedIndex
}

// ClusterVersion returns the cluster version as applied: the log format
// every member supports, raised through the log (see package entry); 1
// until the first rise.
func (s *Store) ClusterVersion() uint32 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return entry.EffectiveVersion(s.meta.ClusterVersion)
}

// Members returns the members of the Raft group as the applied conf
// changes describe them, in id order; the caller may keep them.
func (s *Store) Members() []*statev1.Member {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.Member, len(s.meta.Members))
	for i, m := range s.meta.Members {
		out[i] = proto.Clone(m).(*statev1.Member)
	}
	return out
}

// LogTime returns the state machine's log time (Unix nanoseconds): the
// largest leader time stamp applied so far.
func (s *Store) LogTime() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.meta.LogTime
}

// Get returns the live record for (namespace, key) and the log time it was
// judged at. It returns ErrNotFound when the record is absent or expired.
// The returned record is the caller's.
func (s *Store) Get(namespace, key string) (*statev1.Record, int64, error) {
	if len(namespace) > maxNamespaceLen {
		return nil, 0, ErrNotFound
	}
	s.mu.RLock()
	now, closed := s.meta.LogTime, s.closed
	s.mu.RUnlock()
	if closed {
		return nil, 0, ErrClosed
	}
	rec := &statev1.Record{}
	ok, err := s.getProto(recordKey(namespace, key), protoValue{rec})
	if err != nil {
		return nil, 0, err
	}
	if !ok || now >= rec.GetExpiresAt() {
		return nil, now, ErrNotFound
	}
	return rec, now, nil
}

// Checksum returns a SHA-256 over the state machine's keys and values, meta
// included, and the applied index it describes (both read from one Pebble
// snapshot). Replicas at the same applied index have the same checksum.
func (s *Store) Checksum() ([32]byte, error) {
	sum, _, err := s.ChecksumAt()
	return sum, err
}

// ChecksumAt is Checksum with the applied index the checksum describes.
func (s *Store) ChecksumAt() (sum [32]byte, applied uint64, err error) {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: stateStart, UpperBound: stateEnd})
	if err != nil {
		return sum, 0, err
	}
	h := sha256.New()
	for valid := it.First(); valid; valid = it.Next() {
		if string(it.Key()) == string(metaKey) {
			meta := &statev1.Meta{}
			if err := proto.Unmarshal(it.Value(), meta); err != nil {
				_ = it.Close()
				return sum, 0, fmt.Errorf("%w: meta: %v", ErrCorrupt, err)
			}
			applied = meta.AppliedIndex
		}
		writeChunk(h, it.Key())
		writeChunk(h, it.Value())
	}
	if err := it.Close(); err != nil {
		return sum, 0, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, applied, nil
}

func writeChunk(w io.Writer, b []byte) {
	var n [8]byte
	for i := range n {
		n[i] = byte(uint64(len(b)) >> (8 * i))
	}
	_, _ = w.Write(n[:])
	_, _ = w.Write(b)
}

// guard runs fn, a write to Pebble. Pebble panics when its own log cannot
// be written or synced (it cannot tell what is durable any more): with a
// Fatal hook the panic becomes that hook's clean exit, with the error
// logged, rather than a crash with a stack trace; without one it goes on.
func (s *Store) guard(fn func() error) error {
	if s.fatal != nil {
		defer func() {
			if p := recover(); p != nil {
				msg := fmt.Sprint(p)
				s.logger.Error("pebble: fatal error; the store cannot go on", "err", msg)
				s.fatal(msg)
				panic(p) // fatal must not return
			}
		}()
	}
	return fn()
}

// pebbleLogger sends Pebble's logs to slog.
type pebbleLogger struct {
	l     *slog.Logger
	fatal func(msg string)
}

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error("pebble: fatal error; the store cannot go on", "err", msg)
	if p.fatal != nil {
		p.fatal(msg)
	}
	panic(msg)
}

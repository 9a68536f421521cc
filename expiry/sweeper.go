package expiry

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// Config configures a Sweeper.
type Config struct {
	// Interval is the longest time between two looks at the index (1s).
	Interval time.Duration
	// BatchSize is the most records one Expire entry deletes (1000, at most
	// storage.MaxExpireLimit).
	BatchSize uint32
	// Logger receives the sweeper's logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports a configuration error.
func (c Config) Validate() error {
	if c.Interval < 0 {
		return errors.New("expiry: Interval must not be negative")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Replicator is the log the sweeper proposes to.
type Replicator interface {
	IsLeader() bool
	// LogNow estimates the current log time, the clock expiry is judged by.
	LogNow() int64
	Propose(ctx context.Context, requestID uint64, command []byte) (*statev1.Result, error)
}

// Index tells when the next record expires.
type Index interface {
	NextExpiry() (expiresAt int64, ok bool, err error)
}

// Sweeper proposes Expire entries while its node leads.
type Sweeper struct {
	cfg   Config
	repl  Replicator
	index Index
	log   *slog.Logger

	expired atomic.Uint64
	entries atomic.Uint64

	stop chan struct{}
	wg   sync.WaitGroup
}

// New returns a Sweeper; Start runs it.
func New(cfg Config, repl Replicator, index Index) (*Sweeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Sweeper{cfg: cfg, repl: repl, index: index, log: cfg.Logger.With("component", "expiry"), stop: make(chan struct{})}, nil
}

// Start starts the sweep loop.
func (s *Sweeper) Start() {
	s.wg.Add(1)
	go s.loop()
}

// Stop stops the loop and waits for it.
func (s *Sweeper) Stop() {
	close(s.stop)
	s.wg.Wait()
}

// Stats returns the records this sweeper's entries deleted and the Expire
// entries it proposed.
func (s *Sweeper) Stats() (expired, entries uint64) {
	return s.expired.Load(), s.entries.Load()
}

func (s *Sweeper) loop() {
	defer s.wg.Done()
	timer := time.NewTimer(s.cfg.Interval)
	defer timer.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-timer.C:
		}
		wait := s.cfg.Interval
		if s.repl.IsLeader() {
			if next, ok := s.sweep(); ok {
				wait = min(wait, max(next, time.Millisecond))
			}
		}
		timer.Reset(wait)
	}
}

// sweep proposes Expire entries until nothing is due, and returns how long
// until the next record is due (ok false when the index is empty or a
// proposal failed).
func (s *Sweeper) sweep() (time.Duration, bool) {
	for {
		next, ok, err := s.index.NextExpiry()
		if err != nil {
			s.log.Error("reading the expiry index", "err", err)
			return 0, false
		}
		if !ok {
			return 0, false
		}
		now := s.repl.LogNow()
		if next > now {
			return time.Duration(next - now), true
		}
		res, err := s.propose(now)
		if err != nil {
			s.log.Debug("expire proposal failed", "err", err)
			return 0, false
		}
		if !res.GetMore() {
			// The entry's log time may trail the estimate by a little: look
			// again soon rather than spin on a record not yet due.
			return 10 * time.Millisecond, res.GetExpired() > 0
		}
	}
}

func (s *Sweeper) propose(upTo int64) (*statev1.Result, error) {
	cmd, err := proto.Marshal(&statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{
		UpTo:  upTo,
		Limit: s.cfg.BatchSize,
	}}})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := s.repl.Propose(ctx, 0, cmd)
	if err != nil {
		return nil, err
	}
	s.entries.Add(1)
	s.expired.Add(uint64(res.GetExpired()))
	return res, nil
}

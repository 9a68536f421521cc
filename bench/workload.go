package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"
)

// store is what the workload needs from a backend: an atomic claim that
// either acquires a fresh key or reports what the key holds, and a fenced
// complete. Each backend file implements it with that system's own
// primitives.
type store interface {
	// Claim claims key for a request with fingerprint fp. A fresh key is
	// Acquired; a completed one comes back Completed with its stored
	// response. A fingerprint that differs from the stored one is an error.
	Claim(ctx context.Context, key string, fp []byte) (claim, error)
	// Complete stores resp for a key acquired by c. It fails if the claim
	// was lost (where the backend can tell).
	Complete(ctx context.Context, key string, fp []byte, c claim, resp []byte) error
	// Close releases connections.
	Close() error
}

// claim is the answer to store.Claim.
type claim struct {
	Acquired  bool
	Completed bool
	// Token fences the claim (keystore token, etcd revision, PostgreSQL
	// token column); zero where the backend has none (Redis).
	Token uint64
	// Response is the stored response when Completed.
	Response []byte
}

// runConfig is one measured run.
type runConfig struct {
	Backend     string
	Label       string
	Concurrency int
	Duration    time.Duration
	Warmup      time.Duration
	Dup         float64
	ValueSize   int
	OpTimeout   time.Duration
	// TLS and Auth describe how the clients reached the servers, for the
	// results: security.tlsMode and security.authMode.
	TLS, Auth string
}

// Lease and retention every backend is given, so that all hold a claim and
// a completed record for the same time.
const (
	claimLease     = 30 * time.Second
	claimRetention = 10 * time.Minute
	fingerprintLen = 32
)

// completed is one key whose response was stored, kept for retries.
type completed struct {
	key  string
	fp   []byte
	resp []byte
}

// completedRing holds the keys most recently completed in this run; retries
// pick from it at random. Safe for concurrent use.
type completedRing struct {
	mu    sync.Mutex
	items []completed
	next  int
	full  bool
}

func newCompletedRing(size int) *completedRing {
	return &completedRing{items: make([]completed, size)}
}

func (r *completedRing) add(c completed) {
	r.mu.Lock()
	r.items[r.next] = c
	r.next++
	if r.next == len(r.items) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

// pick returns a random completed key, or false while there is none.
func (r *completedRing) pick(rng *mrand.Rand) (completed, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.items)
	}
	if n == 0 {
		return completed{}, false
	}
	return r.items[rng.IntN(n)], true
}

// window is the measured interval; operations that end inside it count.
type window struct{ start, end time.Time }

func (w window) contains(t time.Time) bool { return !t.Before(w.start) && t.Before(w.end) }

// workerStats is what one worker measured; merged after the run.
type workerStats struct {
	claim, complete, retry []time.Duration
	lifecycles, retries    int64
	attempts, errors       int64
	misses                 int64
	errSamples, missSample []string
}

const maxSamples = 5

func (s *workerStats) fail(w window, end time.Time, format string, args ...any) {
	if !w.contains(end) {
		return
	}
	s.errors++
	if len(s.errSamples) < maxSamples {
		s.errSamples = append(s.errSamples, fmt.Sprintf(format, args...))
	}
}

func (s *workerStats) miss(format string, args ...any) {
	s.misses++
	if len(s.missSample) < maxSamples {
		s.missSample = append(s.missSample, fmt.Sprintf(format, args...))
	}
}

// runLifecycles runs cfg.Concurrency workers against st for the warm-up and
// the measured window, and measures server CPU with meter over the window.
func runLifecycles(ctx context.Context, cfg runConfig, st store, meter *cpuMeter) (*result, error) {
	runID := newRunID()
	ring := newCompletedRing(4096)
	begin := time.Now()
	w := window{start: begin.Add(cfg.Warmup), end: begin.Add(cfg.Warmup + cfg.Duration)}

	stats := make([]*workerStats, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range stats {
		stats[i] = &workerStats{}
		wg.Add(1)
		go func(id int, s *workerStats) {
			defer wg.Done()
			runWorker(ctx, cfg, st, ring, w, fmt.Sprintf("%s/%d", runID, id), s)
		}(i, stats[i])
	}

	// Sample CPU at the window's edges while the workers run.
	cpu, err := meter.measure(ctx, w)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	return newResult(cfg, w, stats, cpu), nil
}

// runWorker loops until the window ends: mostly fresh lifecycles, a
// cfg.Dup fraction of retries of completed keys.
func runWorker(ctx context.Context, cfg runConfig, st store, ring *completedRing, w window, prefix string, s *workerStats) {
	var seed [32]byte
	_, _ = rand.Read(seed[:])
	rng := mrand.New(mrand.NewChaCha8(seed))
	for seq := 0; ; seq++ {
		if ctx.Err() != nil || !time.Now().Before(w.end) {
			return
		}
		if cfg.Dup > 0 && rng.Float64() < cfg.Dup {
			if c, ok := ring.pick(rng); ok {
				retry(ctx, cfg, st, w, c, s)
				continue
			}
		}
		key := fmt.Sprintf("k/%s/%d", prefix, seq)
		fp := make([]byte, fingerprintLen)
		resp := make([]byte, cfg.ValueSize)
		fillRandom(rng, fp)
		fillRandom(rng, resp)
		if lifecycle(ctx, cfg, st, w, key, fp, resp, s) {
			ring.add(completed{key: key, fp: fp, resp: resp})
		}
	}
}

// lifecycle claims a fresh key and completes it; it reports whether the
// response was stored.
func lifecycle(ctx context.Context, cfg runConfig, st store, w window, key string, fp, resp []byte, s *workerStats) bool {
	cctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	t0 := time.Now()
	c, err := st.Claim(cctx, key, fp)
	t1 := time.Now()
	cancel()
	if w.contains(t1) {
		s.attempts++
	}
	if err != nil {
		s.fail(w, t1, "claim %s: %v", key, err)
		return false
	}
	if !c.Acquired {
		s.fail(w, t1, "claim of fresh key %s: not acquired (completed=%v)", key, c.Completed)
		return false
	}
	if w.contains(t1) {
		s.claim = append(s.claim, t1.Sub(t0))
	}

	cctx, cancel = context.WithTimeout(ctx, cfg.OpTimeout)
	err = st.Complete(cctx, key, fp, c, resp)
	t2 := time.Now()
	cancel()
	if w.contains(t2) {
		s.attempts++
	}
	if err != nil {
		s.fail(w, t2, "complete %s: %v", key, err)
		return false
	}
	if w.contains(t2) {
		s.complete = append(s.complete, t2.Sub(t1))
		s.lifecycles++
	}
	return true
}

// retry claims a completed key again and checks the replayed response.
func retry(ctx context.Context, cfg runConfig, st store, w window, c completed, s *workerStats) {
	cctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	t0 := time.Now()
	got, err := st.Claim(cctx, c.key, c.fp)
	t1 := time.Now()
	cancel()
	if w.contains(t1) {
		s.attempts++
	}
	if err != nil {
		s.fail(w, t1, "retry %s: %v", c.key, err)
		return
	}
	// A wrong answer is a miss wherever it happens, warm-up included.
	switch {
	case got.Acquired:
		s.miss("retry %s: acquired again (the operation would run twice)", c.key)
		return
	case !got.Completed:
		s.miss("retry %s: not completed", c.key)
		return
	case !bytes.Equal(got.Response, c.resp):
		s.miss("retry %s: response differs (got %d bytes %x...; want %d bytes %x...)",
			c.key, len(got.Response), head(got.Response), len(c.resp), head(c.resp))
		return
	}
	if w.contains(t1) {
		s.retry = append(s.retry, t1.Sub(t0))
		s.retries++
	}
}

func head(b []byte) []byte { return b[:min(len(b), 8)] }

func fillRandom(rng *mrand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := i; j < min(i+8, len(b)); j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
}

// newRunID names a run's keys so that runs against the same servers never
// meet.
func newRunID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

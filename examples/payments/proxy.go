package main

import (
	"bytes"
	"context"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// faults are the fractions of requests the proxy mistreats. Each request
// meets at most one fault: first drop, then cut, then lose.
type faults struct {
	// Drop: the request is dropped before it reaches the service.
	Drop float64
	// Cut: the request reaches the service, but the caller's connection is
	// cut while the service works on it.
	Cut float64
	// Lose: the service answered, and the answer is lost on the way back.
	Lose float64
}

// fate is what the proxy does with one request.
type fate int

const (
	deliver fate = iota
	drop
	cut
	lose
)

// flakyProxy is an HTTP proxy, loopback only, that drops, cuts and loses a
// seeded share of what passes through it. A lost answer, a cut or a drop
// reach the caller as a connection closed without a response, just as a
// network failure would. Close it to wait for the requests it still
// forwards on behalf of callers it cut.
type flakyProxy struct {
	target  string // the service's base URL
	backend *http.Client
	faults  faults
	seed    uint64
	// cutDelay is how long a cut request runs before its caller is cut off.
	cutDelay time.Duration

	mu      sync.Mutex
	arrived map[string]uint64 // key → requests with it so far

	attempts, dropped, cuts, lost atomic.Int64

	detached sync.WaitGroup // forwards still running for callers that were cut
	stop     context.Context
	stopNow  context.CancelFunc
}

func newFlakyProxy(target string, f faults, seed uint64) *flakyProxy {
	stop, stopNow := context.WithCancel(context.Background())
	return &flakyProxy{
		target:   target,
		backend:  &http.Client{Timeout: 30 * time.Second},
		faults:   f,
		seed:     seed,
		cutDelay: 2 * time.Millisecond,
		arrived:  map[string]uint64{},
		stop:     stop,
		stopNow:  stopNow,
	}
}

// fateOf decides what happens to the n-th request with key. It depends on
// the seed, the key and n only, so the same seed mistreats the same
// attempts whatever order concurrent requests arrive in.
func (p *flakyProxy) fateOf(key string) fate {
	p.mu.Lock()
	n := p.arrived[key]
	p.arrived[key] = n + 1
	p.mu.Unlock()
	h := fnv.New64a()
	_, _ = io.WriteString(h, key)
	rng := rand.New(rand.NewPCG(p.seed, h.Sum64()^(n*0x9e3779b97f4a7c15)))
	switch {
	case rng.Float64() < p.faults.Drop:
		return drop
	case rng.Float64() < p.faults.Cut:
		return cut
	case rng.Float64() < p.faults.Lose:
		return lose
	}
	return deliver
}

func (p *flakyProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.attempts.Add(1)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		hangUp(w)
		return
	}
	switch p.fateOf(r.Header.Get("Idempotency-Key")) {
	case drop:
		p.dropped.Add(1)
		hangUp(w)
		return
	case cut:
		p.cuts.Add(1)
		// The request goes on to the service without its caller, who is
		// cut off while the charge is under way and will retry.
		done := make(chan struct{})
		p.detached.Add(1)
		go func() {
			defer p.detached.Done()
			defer close(done)
			if resp, err := p.forward(p.stop, r, body); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		}()
		select {
		case <-time.After(p.cutDelay):
		case <-done:
		}
		hangUp(w)
		return
	case lose:
		resp, err := p.forward(r.Context(), r, body)
		if err == nil {
			// The service answered in full; the answer is lost.
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		p.lost.Add(1)
		hangUp(w)
		return
	}
	resp, err := p.forward(r.Context(), r, body)
	if err != nil {
		http.Error(w, "proxy: service unreachable", http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// forward sends the request on to the service.
func (p *flakyProxy) forward(ctx context.Context, r *http.Request, body []byte) (*http.Response, error) {
	out, err := http.NewRequestWithContext(ctx, r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	out.Header = r.Header.Clone()
	return p.backend.Do(out)
}

// Close waits for the forwards of cut callers to finish, cancels those
// still running after grace, and waits for them.
func (p *flakyProxy) Close(grace time.Duration) {
	done := make(chan struct{})
	go func() { p.detached.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		p.stopNow()
		<-done
	}
	p.stopNow()
	p.backend.CloseIdleConnections()
}

// hangUp closes the caller's connection without an answer.
func hangUp(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not hijackable (HTTP/2): the nearest thing is an aborted handler.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/client/httpidem"
)

// demoConfig configures one run of the demo.
type demoConfig struct {
	// Endpoints of a keystore cluster; empty starts an embedded one.
	Endpoints []string
	// Payments is how many distinct payments the client makes.
	Payments int
	// Concurrency is how many payments are under way at once.
	Concurrency int
	// MaxAttempts bounds the attempts of one payment.
	MaxAttempts int
	// Seed decides the proxy's faults.
	Seed   uint64
	Faults faults
	// ChargeLatency is how long the card network takes per charge.
	ChargeLatency time.Duration
	// Unprotected serves the payment handler without keystore, to show
	// what the retries do then.
	Unprotected bool
	// Logger receives the components' logs.
	Logger *slog.Logger
}

func (c demoConfig) validate() error {
	switch {
	case c.Payments <= 0:
		return errors.New("--payments must be positive")
	case c.Concurrency <= 0:
		return errors.New("--concurrency must be positive")
	case c.MaxAttempts <= 0:
		return errors.New("--max-attempts must be positive")
	case c.ChargeLatency < 0:
		return errors.New("--charge-latency must not be negative")
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"--drop-rate", c.Faults.Drop}, {"--cut-rate", c.Faults.Cut}, {"--failure-rate", c.Faults.Lose}} {
		if !(r.v >= 0 && r.v < 1) {
			return fmt.Errorf("%s must be in [0, 1)", r.name)
		}
	}
	return nil
}

// report is what a run found.
type report struct {
	Keystore string // what protected the service

	Payments   int   // payments requested
	Answered   int   // payments that got their charge id
	Attempts   int64 // HTTP attempts the client made
	Arrived    int64 // HTTP requests the proxy saw
	Dropped    int64 // requests the proxy dropped
	Cut        int64 // connections the proxy cut mid-charge
	Lost       int64 // responses the proxy lost after the service answered
	Replayed   int64 // answers the client got from keystore's store
	Busy       int64 // 409/5xx answers (in progress elsewhere, unavailable)
	Charges    int   // charges the service made
	Distinct   int   // distinct keys charged
	Doubled    int   // keys charged more than once
	Mismatched int   // answers naming a charge other than the key's first
	FirstError error // why the first unanswered payment was not answered

	Elapsed time.Duration
}

// DoubleCharges is how many charges were made beyond one per key.
func (r *report) DoubleCharges() int { return r.Charges - r.Distinct }

// OK reports whether every payment was answered and charged exactly once.
func (r *report) OK() bool {
	return r.DoubleCharges() == 0 && r.Answered == r.Payments && r.Distinct == r.Payments && r.Mismatched == 0
}

// runDemo runs the whole demonstration within ctx and reports what
// happened. Everything it starts is stopped before it returns.
func runDemo(ctx context.Context, cfg demoConfig) (*report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	var stack closers
	defer stack.closeAll()
	rep := &report{Payments: cfg.Payments, Keystore: "none (--unprotected)"}

	// The payment service, behind keystore unless asked not to be.
	led := newLedger()
	var handler http.Handler = &paymentService{ledger: led, latency: cfg.ChargeLatency}
	runID := ""
	if !cfg.Unprotected {
		endpoints := cfg.Endpoints
		if len(endpoints) == 0 {
			cl, err := startCluster(ctx, 3, cfg.Logger)
			if err != nil {
				return nil, fmt.Errorf("starting the embedded cluster: %w", err)
			}
			stack.push(cl.Stop)
			endpoints = cl.Endpoints()
			rep.Keystore = "embedded 3-node cluster " + strings.Join(endpoints, ",")
		} else {
			// A cluster outlives this run: fresh keys, or this run would
			// replay the last one's charges.
			runID = fmt.Sprintf("%x-", time.Now().UnixNano())
			rep.Keystore = "cluster " + strings.Join(endpoints, ",")
		}
		ks, err := client.New(ctx, client.Config{Endpoints: endpoints})
		if err != nil {
			return nil, err
		}
		stack.push(func() { _ = ks.Close() })
		handler = httpidem.Middleware(ks,
			httpidem.WithNamespace("payments"),
			// A retry that finds the charge under way waits for it and
			// gets its answer, rather than a 409.
			httpidem.WithWait(5*time.Second),
			httpidem.WithLease(5*time.Second),
			httpidem.WithLogger(cfg.Logger),
		)(handler)
	}
	svcURL, stopSvc, err := serve(handler)
	if err != nil {
		return nil, err
	}
	stack.push(stopSvc)

	// The flaky network between the client and the service.
	proxy := newFlakyProxy(svcURL, cfg.Faults, cfg.Seed)
	stack.push(func() { proxy.Close(2 * time.Second) })
	proxyURL, stopProxy, err := serve(proxy)
	if err != nil {
		return nil, err
	}
	stack.push(stopProxy)

	// The client: Concurrency workers share the payments.
	pay := newPayer(proxyURL, cfg.MaxAttempts)
	results := make([]payment, cfg.Payments)
	next := make(chan int)
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				key := fmt.Sprintf("pay-%s%05d", runID, i+1)
				results[i] = pay.pay(ctx, key, chargeRequest{Amount: int64(1000 + i), Currency: "EUR", Card: "tok_visa_4242"})
			}
		}()
	}
	for i := range cfg.Payments {
		next <- i
	}
	close(next)
	wg.Wait()

	// Stop the proxy (and wait for the charges it still forwards) before
	// counting them.
	stack.closeAll()

	t := led.totals()
	rep.Charges, rep.Distinct, rep.Doubled = t.charges, t.distinctKeys, t.doubled
	rep.Attempts, rep.Replayed, rep.Busy = pay.attempts.Load(), pay.replays.Load(), pay.busy.Load()
	rep.Arrived, rep.Dropped, rep.Cut, rep.Lost = proxy.attempts.Load(), proxy.dropped.Load(), proxy.cuts.Load(), proxy.lost.Load()
	for _, r := range results {
		if r.chargeID == "" {
			if rep.FirstError == nil {
				rep.FirstError = fmt.Errorf("%s: %w", r.key, r.err)
			}
			continue
		}
		rep.Answered++
		if ids := led.chargesOf(r.key); len(ids) == 0 || ids[0] != r.chargeID {
			rep.Mismatched++
		}
	}
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// serve serves h on a loopback port until the returned stop is called.
func serve(h http.Handler) (url string, stop func(), err error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	return "http://" + lis.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			_ = srv.Close()
		}
		<-done
	}, nil
}

// closers stops what a run started, last started first. closeAll may be
// called more than once.
type closers struct{ fns []func() }

func (c *closers) push(f func()) { c.fns = append(c.fns, f) }

func (c *closers) closeAll() {
	for len(c.fns) > 0 {
		f := c.fns[len(c.fns)-1]
		c.fns = c.fns[:len(c.fns)-1]
		f()
	}
}

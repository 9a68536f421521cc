package faultproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// silence is how long a test listens to be sure nothing arrives.
const silence = 300 * time.Millisecond

// echoServer echoes every connection until it ends, then closes it.
type echoServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln, conns: map[net.Conn]struct{}{}}
	e.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			e.wg.Go(func() {
				_, _ = io.Copy(c, c)
				_ = c.Close()
				e.mu.Lock()
				delete(e.conns, c)
				e.mu.Unlock()
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		e.mu.Lock()
		for c := range e.conns {
			_ = c.Close()
		}
		e.mu.Unlock()
		e.wg.Wait()
	})
	return ln.Addr().String()
}

// startProxy starts a proxy to target that is closed, and checked for
// leftover goroutines, when the test ends.
func startProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(func() {
		p.Close()
		if n := proxyGoroutines(); n != 0 {
			t.Errorf("after Close: %d proxy goroutines; want 0", n)
		}
	})
	return p
}

// proxyGoroutines counts goroutines running the proxy's code.
func proxyGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "faultproxy.(*Proxy)") || strings.Contains(g, "faultproxy.(*link)") {
			n++
		}
	}
	return n
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// roundTrip writes msg and wants it echoed within a few seconds.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo of %q: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q; want %q", got, msg)
	}
}

// wantSilence writes msg and wants nothing back, and the connection still
// open, for the silence period.
func wantSilence(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(silence))
	n, err := c.Read(make([]byte, 64))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read during blackhole: got %d bytes, %v; want a timeout", n, err)
	}
}

// wantClosed wants the connection closed by the proxy (EOF or reset).
func wantClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, err := c.Read(make([]byte, 64))
		if err == nil {
			continue // data still in flight before the cut
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("read: got %v; want the connection closed", err)
		}
		return
	}
}

// waitFor polls cond until it holds or a few seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNewRejectsNonLoopback(t *testing.T) {
	for _, tc := range []struct {
		listen, target string
		want           error
	}{
		{"127.0.0.1:0", "127.0.0.1:1", nil},
		{"localhost:0", "[::1]:1", nil},
		{"0.0.0.0:0", "127.0.0.1:1", ErrNotLoopback},
		{":0", "127.0.0.1:1", ErrNotLoopback},
		{"127.0.0.1:0", "10.0.0.1:80", ErrNotLoopback},
		{"127.0.0.1:0", "example.com:80", ErrNotLoopback},
	} {
		p, err := New(tc.listen, tc.target)
		if err == nil {
			p.Close()
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("New(%q, %q): got %v; want %v", tc.listen, tc.target, err, tc.want)
		}
	}
}

func TestPassForwards(t *testing.T) {
	p := startProxy(t, startEcho(t))
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "hello")
	roundTrip(t, b, "world!")
	roundTrip(t, a, "again")
	waitFor(t, "stats", func() bool {
		s := p.Stats()
		return s.Accepted == 2 && s.Active == 2 && s.BytesForwarded == 2*(5+6+5) && s.Dropped == 0
	})

	// A half-close travels through: the echo server sees EOF, closes, and
	// the client reads the rest of the echo and then EOF.
	if _, err := a.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := a.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(a)
	if err != nil || string(got) != "last words" {
		t.Fatalf("after half-close: got %q, %v; want %q, nil", got, err, "last words")
	}
	waitFor(t, "one active connection", func() bool { return p.Stats().Active == 1 })
	if s := p.Stats(); s.Resets != 0 || s.Blackholed != 0 {
		t.Fatalf("stats: got %+v; want no resets, nothing blackholed", s)
	}
}

func TestDropBlackholesThenPassCutsSurvivors(t *testing.T) {
	p := startProxy(t, startEcho(t))
	old := dial(t, p.Addr())
	roundTrip(t, old, "before")

	p.Drop()
	wantSilence(t, old, "during")
	fresh := dial(t, p.Addr())
	wantSilence(t, fresh, "new")
	waitFor(t, "dropped bytes counted", func() bool {
		s := p.Stats()
		return s.Dropped == int64(len("during")+len("new")) && s.Blackholed == 1 && s.Accepted == 2
	})

	// Pass closes both connections that lived through the Drop; a new one
	// forwards.
	p.Pass()
	wantClosed(t, old)
	wantClosed(t, fresh)
	after := dial(t, p.Addr())
	roundTrip(t, after, "after")
	if s := p.Stats(); s.Resets != 2 {
		t.Fatalf("Resets: got %d; want 2", s.Resets)
	}
	waitFor(t, "one active connection", func() bool { return p.Stats().Active == 1 })
}

func TestDelayKeepsOrder(t *testing.T) {
	const base, jitter = 100 * time.Millisecond, 50 * time.Millisecond
	p := startProxy(t, startEcho(t))
	c := dial(t, p.Addr())
	roundTrip(t, c, "warm")

	p.Delay(base, jitter)
	start := time.Now()
	roundTrip(t, c, "ping")
	// Each direction is delayed by at least base.
	if rtt := time.Since(start); rtt < 2*base {
		t.Fatalf("round trip under Delay(%v, %v): got %v; want ≥ %v", base, jitter, rtt, 2*base)
	}

	// A thousand small writes, each its own chunk with its own jitter,
	// come back in order.
	const n = 1000
	writeErr := make(chan error, 1)
	go func() {
		var b [4]byte
		for i := range uint32(n) {
			binary.BigEndian.PutUint32(b[:], i)
			if _, err := c.Write(b[:]); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 4*n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	for i := range uint32(n) {
		if v := binary.BigEndian.Uint32(got[4*i:]); v != i {
			t.Fatalf("word %d: got %d; want %d", i, v, i)
		}
	}

	// Back to Pass: the same connection keeps working.
	p.Pass()
	roundTrip(t, c, "pass")
}

func TestResetCutsConnections(t *testing.T) {
	p := startProxy(t, startEcho(t))
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "a")
	roundTrip(t, b, "b")

	p.Reset()
	wantClosed(t, a)
	wantClosed(t, b)
	c := dial(t, p.Addr())
	roundTrip(t, c, "c")
	if s := p.Stats(); s.Resets != 2 || s.Accepted != 3 {
		t.Fatalf("stats: got %+v; want 2 resets of 3 accepted", s)
	}
}

func TestDropFraction(t *testing.T) {
	target := startEcho(t)
	const conns = 16
	// pattern opens conns connections in turn through a proxy in
	// DropFraction(frac, seed) and reports which of them forward.
	pattern := func(t *testing.T, frac float64, seed int64) []bool {
		p := startProxy(t, target)
		p.DropFraction(frac, seed)
		cs := make([]net.Conn, conns)
		for i := range cs {
			cs[i] = dial(t, p.Addr())
			// Wait for the accept, so the draws follow dial order.
			waitFor(t, "accept", func() bool { return p.Stats().Accepted == int64(i+1) })
			if _, err := cs[i].Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		// Every byte is accounted for: echoed (two bytes forwarded) or
		// discarded. Once it is, every echo is in its client's socket.
		waitFor(t, "every byte echoed or dropped", func() bool {
			s := p.Stats()
			return s.BytesForwarded == 2*(conns-s.Blackholed) && s.Dropped == s.Blackholed
		})
		got := make([]bool, conns)
		blackholed := 0
		for i, c := range cs {
			// The echo, if any, is already here: the deadline need
			// only outlast the read itself.
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			got[i] = err == nil
			if !got[i] {
				blackholed++
			}
		}
		if s := p.Stats(); s.Blackholed != int64(blackholed) {
			t.Fatalf("Blackholed: got %d; want %d (the connections that did not echo)", s.Blackholed, blackholed)
		}
		// Leaving DropFraction cuts the blackholed connections.
		p.Pass()
		waitFor(t, "blackholed connections cut", func() bool {
			s := p.Stats()
			return s.Resets == int64(blackholed) && s.Active == int64(conns-blackholed)
		})
		// Close now, not at the end of the test: startProxy's check for
		// leftover goroutines counts every proxy's.
		p.Close()
		return got
	}
	count := func(bs []bool) (n int) {
		for _, b := range bs {
			if b {
				n++
			}
		}
		return n
	}

	for _, tc := range []struct {
		name     string
		frac     float64
		min, max int // forwarding connections
	}{
		{"none", 0, conns, conns},
		{"all", 1, 0, 0},
		{"half", 0.5, 1, conns - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := pattern(t, tc.frac, 7)
			if n := count(got); n < tc.min || n > tc.max {
				t.Fatalf("forwarding connections: got %d of %d; want %d..%d", n, conns, tc.min, tc.max)
			}
			if tc.name != "half" {
				return
			}
			if again := pattern(t, tc.frac, 7); !equal(got, again) {
				t.Fatalf("same seed, different connections blackholed:\n%v\n%v", got, again)
			}
		})
	}
}

func equal(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	target := startEcho(t)
	before := runtime.NumGoroutine()

	p, err := New("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	p.Start() // a second Start does nothing
	// One connection of every kind: passing, mid-Delay with chunks
	// queued, lived through a Drop, blackholed.
	passing := dial(t, p.Addr())
	roundTrip(t, passing, "pass")
	delayed := dial(t, p.Addr())
	roundTrip(t, delayed, "delay")
	p.Delay(time.Hour, 0)
	if _, err := delayed.Write(bytes.Repeat([]byte("q"), 100)); err != nil {
		t.Fatal(err)
	}
	p.Drop()
	blackholed := dial(t, p.Addr())
	if _, err := blackholed.Write([]byte("void")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "three connections", func() bool { return p.Stats().Active == 3 })

	p.Close()
	p.Close() // and a second Close too
	if n := proxyGoroutines(); n != 0 {
		t.Fatalf("after Close: %d proxy goroutines; want 0", n)
	}
	for _, c := range []net.Conn{passing, delayed, blackholed} {
		wantClosed(t, c)
		_ = c.Close()
	}
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		_ = c.Close()
		t.Fatalf("dial after Close succeeded; want refused")
	}
	// The echo server's goroutines end as their connections close.
	waitFor(t, "goroutines back to the count before", func() bool {
		return runtime.NumGoroutine() <= before
	})

	// Close without Start is fine too.
	q, err := New("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	q.Start() // after Close: does nothing
	if n := proxyGoroutines(); n != 0 {
		t.Fatalf("Start after Close: %d proxy goroutines; want 0", n)
	}
}

// startHealth serves the gRPC health service on loopback and returns its
// server, so a test can change the status it reports.
func startHealth(t *testing.T) (string, *health.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(ln)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return ln.Addr().String(), hs
}

// healthClient dials addr with reconnect backoff short enough for tests.
func healthClient(t *testing.T, addr string) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return healthpb.NewHealthClient(cc)
}

// check makes a health check with the given timeout and returns its code.
func check(hc healthpb.HealthClient, timeout time.Duration, opts ...grpc.CallOption) codes.Code {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, opts...)
	return status.Code(err)
}

// eventuallyOK retries health checks until one succeeds, for up to five
// seconds, and returns how long that took. A call already on its way over
// a connection the proxy cuts fails UNAVAILABLE; the peers in a fault run
// retry the same way.
func eventuallyOK(t *testing.T, hc healthpb.HealthClient) time.Duration {
	t.Helper()
	start := time.Now()
	var seen []codes.Code
	for time.Since(start) < 5*time.Second {
		c := check(hc, time.Second, grpc.WaitForReady(true))
		if c == codes.OK {
			return time.Since(start)
		}
		seen = append(seen, c)
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no health check succeeded within 5s; got %v", seen)
	return 0
}

// watch opens a health Watch and waits for its first update.
func watch(ctx context.Context, t *testing.T, hc healthpb.HealthClient) healthpb.Health_WatchClient {
	t.Helper()
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch update: got %v, %v; want SERVING", r, err)
	}
	return w
}

func TestGRPCDropThenPass(t *testing.T) {
	addr, hs := startHealth(t)
	p := startProxy(t, addr)
	hc := healthClient(t, p.Addr())
	if c := check(hc, 5*time.Second, grpc.WaitForReady(true)); c != codes.OK {
		t.Fatalf("Check before Drop: got %v; want OK", c)
	}

	// A stream in flight when the Drop starts hears nothing more.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	w := watch(ctx, t, hc)
	p.Drop()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if r, err := w.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Watch across Drop: got %v, %v; want DEADLINE_EXCEEDED", r, err)
	}
	// Nor does a call made during it.
	if c := check(hc, 500*time.Millisecond); c != codes.DeadlineExceeded {
		t.Fatalf("Check during Drop: got %v; want DEADLINE_EXCEEDED", c)
	}

	p.Pass()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	t.Logf("recovered %v after Pass", eventuallyOK(t, hc))
	if s := p.Stats(); s.Resets != 1 {
		t.Fatalf("Resets: got %d; want 1 (the connection that lived through the Drop)", s.Resets)
	}
}

func TestGRPCDelay(t *testing.T) {
	addr, _ := startHealth(t)
	p := startProxy(t, addr)
	hc := healthClient(t, p.Addr())
	if c := check(hc, 5*time.Second, grpc.WaitForReady(true)); c != codes.OK {
		t.Fatalf("Check: got %v; want OK", c)
	}
	const base = 100 * time.Millisecond
	p.Delay(base, 20*time.Millisecond)
	start := time.Now()
	if c := check(hc, 5*time.Second); c != codes.OK {
		t.Fatalf("Check under Delay: got %v; want OK", c)
	}
	if rtt := time.Since(start); rtt < 2*base {
		t.Fatalf("Check under Delay(%v): took %v; want ≥ %v", base, rtt, 2*base)
	}
}

func TestGRPCReset(t *testing.T) {
	addr, _ := startHealth(t)
	p := startProxy(t, addr)
	hc := healthClient(t, p.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w := watch(ctx, t, hc)

	p.Reset()
	if r, err := w.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("Watch across Reset: got %v, %v; want UNAVAILABLE", r, err)
	}
	t.Logf("recovered %v after Reset", eventuallyOK(t, hc))
	if s := p.Stats(); s.Resets != 1 || s.Accepted < 2 {
		t.Fatalf("stats: got %+v; want 1 reset, ≥ 2 accepted (the reconnect)", s)
	}
}

package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNotLoopback is returned by New for an address that is not loopback.
var ErrNotLoopback = errors.New("faultproxy: address is not loopback")

// mode is what the proxy does with bytes and new connections.
type mode int

const (
	modePass mode = iota
	modeDrop
	modeDelay
	modeFraction
)

// Stats are counters of what a Proxy has done since New.
type Stats struct {
	// Accepted is the number of connections accepted.
	Accepted int64
	// Active is the number of accepted connections whose goroutines have
	// not yet finished; a closed connection leaves it shortly after.
	Active int64
	// BytesForwarded is the number of bytes written to either side.
	BytesForwarded int64
	// Dropped is the number of bytes read from either side and discarded.
	Dropped int64
	// Blackholed is the number of connections accepted and never connected
	// to the target: those accepted during a Drop or picked by DropFraction.
	Blackholed int64
	// Resets is the number of connections the proxy cut: by Reset, or on
	// leaving a Drop or a DropFraction.
	Resets int64
}

// Proxy forwards TCP connections from its listening address to a target,
// injecting the faults of its current mode. All methods are safe for
// concurrent use. The caller must Close it.
type Proxy struct {
	target string
	ln     net.Listener
	done   chan struct{} // closed by Close

	mu          sync.Mutex
	mode        mode
	base        time.Duration // modeDelay
	jitter      time.Duration // modeDelay
	jitterRNG   *rand.Rand
	fraction    float64 // modeFraction
	fractionRNG *rand.Rand
	links       map[*link]struct{}
	started     bool
	closed      bool

	// wg counts the accept loop and one goroutine per link, which in turn
	// waits for the link's pumps. NB: Add happens only under mu while
	// !closed, so Close's Wait cannot race with a late Add.
	wg sync.WaitGroup

	accepted, forwarded, dropped, blackholed, resets atomic.Int64
}

// New listens on listenAddr (which may be "127.0.0.1:0") for connections to
// forward to targetAddr. Both must be loopback. The proxy starts in Pass
// mode and accepts nothing until Start.
func New(listenAddr, targetAddr string) (*Proxy, error) {
	for _, a := range []string{listenAddr, targetAddr} {
		if err := checkLoopback(a); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen on %s: %w", listenAddr, err)
	}
	return &Proxy{
		target:    targetAddr,
		ln:        ln,
		done:      make(chan struct{}),
		jitterRNG: rand.New(rand.NewPCG(1, 2)),
		links:     map[*link]struct{}{},
	}, nil
}

// checkLoopback reports whether addr's host is localhost or a loopback IP.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("faultproxy: address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%w: %q", ErrNotLoopback, addr)
}

// Addr returns the address the proxy listens on, with the port filled in.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Start begins accepting connections. It does nothing if the proxy was
// already started or closed.
func (p *Proxy) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	p.wg.Go(p.acceptLoop)
}

// Close closes the listener and every connection, and waits for all of the
// proxy's goroutines to finish. It may be called more than once.
func (p *Proxy) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.done)
		_ = p.ln.Close()
		for l := range p.links {
			l.close(false)
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// Pass forwards both directions. Connections that were blackholed or lived
// through a Drop are closed.
func (p *Proxy) Pass() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = modePass
	p.cutBroken()
}

// Drop blackholes the link: every connection stops forwarding (bytes read
// are discarded, nothing is written, connections stay open) and new
// connections are accepted but never connected to the target. A write
// already under way when Drop is called may still complete, as a packet
// already on the wire would.
func (p *Proxy) Drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = modeDrop
	for l := range p.links {
		l.broken.Store(true)
	}
}

// Delay forwards each chunk read after base + uniform[0, jitter), never
// reordering bytes within a direction: a chunk due earlier than the one
// ahead of it waits for it. Negative durations count as zero. Connections
// that were blackholed or lived through a Drop are closed. Chunks already
// queued keep the delay they were read with.
func (p *Proxy) Delay(base, jitter time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = modeDelay
	p.base = max(base, 0)
	p.jitter = max(jitter, 0)
	p.cutBroken()
}

// DropFraction forwards like Pass, but blackholes each new connection with
// probability frac (clamped to [0, 1]), drawn from a random source seeded
// with seed: the same seed blackholes the same connections in accept
// order. Connections that were blackholed or lived through a Drop are
// closed, including those picked by an earlier DropFraction.
func (p *Proxy) DropFraction(frac float64, seed int64) {
	if math.IsNaN(frac) {
		frac = 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = modeFraction
	p.fraction = min(max(frac, 0), 1)
	p.fractionRNG = rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))
	p.cutBroken()
}

// Reset cuts every current connection now, with a TCP RST to both peers,
// and then passes.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = modePass
	for l := range p.links {
		if l.close(true) {
			p.resets.Add(1)
		}
	}
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	active := int64(len(p.links))
	p.mu.Unlock()
	return Stats{
		Accepted:       p.accepted.Load(),
		Active:         active,
		BytesForwarded: p.forwarded.Load(),
		Dropped:        p.dropped.Load(),
		Blackholed:     p.blackholed.Load(),
		Resets:         p.resets.Load(),
	}
}

// cutBroken closes every connection that may have lost bytes. p.mu must be
// held.
func (p *Proxy) cutBroken() {
	for l := range p.links {
		if l.broken.Load() && l.close(false) {
			p.resets.Add(1)
		}
	}
}

// due returns when a chunk read now is to be written: the zero time means
// at once. It reads the clock and the jitter source under p.mu.
func (p *Proxy) due() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode != modeDelay {
		return time.Time{}
	}
	d := p.base
	if p.jitter > 0 {
		d += time.Duration(p.jitterRNG.Int64N(int64(p.jitter)))
	}
	return time.Now().Add(d)
}

func (p *Proxy) acceptLoop() {
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			select {
			case <-p.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure such as running out of file
			// descriptors: back off briefly, as net/http does.
			select {
			case <-p.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		p.admit(conn)
	}
}

// admit registers an accepted connection and starts serving it. Whether it
// is blackholed is decided here, in accept order, so DropFraction's choices
// depend on the seed and that order only.
func (p *Proxy) admit(conn net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = conn.Close()
		return
	}
	p.accepted.Add(1)
	blackholed := p.mode == modeDrop ||
		(p.mode == modeFraction && p.fraction > 0 && p.fractionRNG.Float64() < p.fraction)
	if blackholed {
		p.blackholed.Add(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := newLink(conn, blackholed, cancel)
	p.links[l] = struct{}{}
	p.wg.Go(func() { p.serve(ctx, l) })
}

// forget removes a link whose goroutines have finished.
func (p *Proxy) forget(l *link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.links, l)
}

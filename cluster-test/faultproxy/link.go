package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// readSize is the most one read takes from a side.
	readSize = 32 << 10
	// queueLen is how many chunks a direction holds before its reader
	// waits: enough for ten thousand chunks a second under a 100ms delay.
	queueLen = 1024
)

// link is one proxied connection: the accepted client side and, unless it
// is blackholed, a connection to the target. Each direction has a reader
// that queues chunks and a writer that writes them when due; serve waits
// for all four.
type link struct {
	client net.Conn
	// blackholed links are never connected to the target.
	blackholed bool
	// broken is set when the link stops forwarding (blackholed, or
	// Drop). NB: it is never cleared; a broken link is only ever closed,
	// because its streams may have lost bytes from the middle.
	broken atomic.Bool
	// halves counts directions whose end of stream was delivered; at two
	// the link is done.
	halves atomic.Int32
	// done is closed by close; pumps waiting on anything select on it.
	done chan struct{}

	mu         sync.Mutex
	server     net.Conn // set once dialled
	closed     bool
	cancelDial context.CancelFunc
}

func newLink(client net.Conn, blackholed bool, cancelDial context.CancelFunc) *link {
	l := &link{client: client, blackholed: blackholed, done: make(chan struct{}), cancelDial: cancelDial}
	l.broken.Store(blackholed)
	return l
}

// attach records the connection to the target, or closes it and reports
// false if the link was closed while dialling.
func (l *link) attach(server net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = server.Close()
		return false
	}
	l.server = server
	return true
}

// close closes both sides, with an RST if rst, and reports whether this
// call closed the link. It is safe to call any number of times.
func (l *link) close(rst bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.closed = true
	close(l.done)
	l.cancelDial()
	for _, c := range []net.Conn{l.client, l.server} {
		if c == nil {
			continue
		}
		if tc, ok := c.(*net.TCPConn); ok && rst {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	return true
}

// chunk is bytes read from one side, due on the other at due (the zero
// time: at once). eof marks the end of the reader's stream.
type chunk struct {
	data []byte
	due  time.Time
	eof  bool
}

// serve runs a link until it is closed, then removes it from the proxy.
func (p *Proxy) serve(ctx context.Context, l *link) {
	defer p.forget(l)
	defer l.close(false)
	if l.blackholed {
		// NB: when the client closes, so does the link. A partition
		// would swallow that FIN, but a client that closed is not
		// listening any more, and a flaky link reconnecting for hours
		// must not pile up descriptors.
		p.discard(l.client)
		return
	}
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", p.target)
	if err != nil {
		// The deferred close cuts the client, as a refused connection
		// would have.
		return
	}
	if !l.attach(server) {
		return
	}
	toServer := make(chan chunk, queueLen)
	toClient := make(chan chunk, queueLen)
	var wg sync.WaitGroup
	wg.Go(func() { p.read(l, l.client, toServer) })
	wg.Go(func() { p.write(l, server, toServer) })
	wg.Go(func() { p.read(l, server, toClient) })
	wg.Go(func() { p.write(l, l.client, toClient) })
	wg.Wait()
}

// discard reads src until it fails, counting what it throws away.
func (p *Proxy) discard(src net.Conn) {
	buf := make([]byte, readSize)
	for {
		n, err := src.Read(buf)
		p.dropped.Add(int64(n))
		if err != nil {
			return
		}
	}
}

// read queues what it reads from src for the writer of the other side,
// stamped with when it is due, or discards it while the link is broken.
func (p *Proxy) read(l *link, src net.Conn, q chan<- chunk) {
	buf := make([]byte, readSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if l.broken.Load() {
				p.dropped.Add(int64(n))
			} else if !l.send(q, chunk{data: bytes.Clone(buf[:n]), due: p.due()}) {
				return
			}
		}
		if err == nil {
			continue
		}
		switch {
		case l.broken.Load():
			// Partitioned: the other side must not learn of this.
		case errors.Is(err, io.EOF):
			// Forward the half-close in order, behind the data.
			l.send(q, chunk{eof: true, due: p.due()})
		default:
			l.close(false)
		}
		return
	}
}

// send queues c unless the link closes first, and reports whether it did.
func (l *link) send(q chan<- chunk, c chunk) bool {
	select {
	case q <- c:
		return true
	case <-l.done:
		return false
	}
}

// write writes the chunks of q to dst in order, each when due, and discards
// them while the link is broken.
func (p *Proxy) write(l *link, dst net.Conn, q <-chan chunk) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var c chunk
		select {
		case c = <-q:
		case <-l.done:
			return
		}
		if wait := time.Until(c.due); !c.due.IsZero() && wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			select {
			case <-timer.C:
			case <-l.done:
				return
			}
		}
		if l.broken.Load() {
			if c.eof {
				return
			}
			p.dropped.Add(int64(len(c.data)))
			continue
		}
		if c.eof {
			if cw, ok := dst.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
				l.close(false)
			} else if l.halves.Add(1) == 2 {
				l.close(false)
			}
			return
		}
		n, err := dst.Write(c.data)
		p.forwarded.Add(int64(n))
		if err != nil {
			if !l.broken.Load() {
				l.close(false)
			}
			return
		}
	}
}

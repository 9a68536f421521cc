package raftnode

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// Raft messages travel over plain TCP connections on the peer port, beside
// the peer gRPC service (which keeps Forward). A gRPC stream adds two
// goroutine hand-offs to every message (its reader hands each message to
// the handler goroutine and its writer is one more goroutine, on both
// ends), and a raft commit pays a round trip of them (leader to follower
// and back); docs/performance-notes.md has the figures.
//
// A connection carries messages one way, from the dialling node to the
// accepting one. It starts with a preamble:
//
//	magic "KSRAFT\x00\x01" | cluster id u64 LE | from u64 LE | to u64 LE
//
// then frames, each a batch of messages:
//
//	length u32 LE | (uvarint length | raftpb.Message)...
//
// The acceptor checks the preamble (cluster, membership, that it is the
// addressee) and then every message's From and To against it, before raft
// sees anything: a stranger's higher term would make a leader step down.
// Any violation closes the connection.

// peerMagic starts a raft connection; gRPC's connections start with the
// HTTP/2 preface instead ("PRI * HT..."), which is how the peer port tells
// them apart.
const peerMagic = "KSRAFT\x00\x01"

const (
	preambleLen = len(peerMagic) + 24
	// preambleTimeout bounds how long an accepted connection may take to
	// say what it is.
	preambleTimeout = 10 * time.Second
)

// PeerPreamble is the start of a raft connection from node from to node to
// of cluster clusterID. Exported for tests that speak the protocol.
func PeerPreamble(clusterID, from, to uint64) []byte {
	b := make([]byte, 0, preambleLen)
	b = append(b, peerMagic...)
	b = binary.LittleEndian.AppendUint64(b, clusterID)
	b = binary.LittleEndian.AppendUint64(b, from)
	return binary.LittleEndian.AppendUint64(b, to)
}

// PeerFrame encodes msgs as one frame. Exported for tests that speak the
// protocol.
func PeerFrame(msgs ...raftpb.Message) ([]byte, error) {
	return appendFrame(nil, msgs)
}

// appendFrame appends the frame of msgs to b.
func appendFrame(b []byte, msgs []raftpb.Message) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, 0, 0)
	for i := range msgs {
		n := msgs[i].Size()
		b = binary.AppendUvarint(b, uint64(n))
		off := len(b)
		b = append(b, make([]byte, n)...)
		if _, err := msgs[i].MarshalToSizedBuffer(b[off : off+n]); err != nil {
			return b[:start], err
		}
	}
	size := len(b) - start - 4
	if size > MaxMessageBytes {
		return b[:start], fmt.Errorf("raftnode: a frame of %d bytes exceeds %d", size, MaxMessageBytes)
	}
	binary.LittleEndian.PutUint32(b[start:], uint32(size))
	return b, nil
}

// peerListener splits the peer port: raft connections go to serveRaft,
// every other connection to whoever Accepts (the peer gRPC server).
type peerListener struct {
	net.Listener
	serveRaft     func(c net.Conn, preamble []byte)
	serveSnapshot func(c net.Conn, preamble []byte)
	conns         chan net.Conn
	done          chan struct{}
	closeOnce     sync.Once
}

// SplitPeerListener returns the listener the peer gRPC server should serve
// on; raft connections arriving on lis are served by n.
// Without the TCP transport (Config.Transport set), lis is returned as is.
func (n *Node) SplitPeerListener(lis net.Listener) net.Listener {
	if n.tcp == nil {
		return lis
	}
	if n.tcp.tls != nil {
		// Every connection is TLS; route reads the preamble through it,
		// which runs the handshake (bounded by preambleTimeout).
		lis = tls.NewListener(lis, n.tcp.tls.Server)
	}
	pl := &peerListener{Listener: lis, serveRaft: n.tcp.serveRaft, serveSnapshot: n.tcp.serveSnapshot, conns: make(chan net.Conn), done: make(chan struct{})}
	go pl.acceptLoop()
	return pl
}

func (pl *peerListener) acceptLoop() {
	backoff := 5 * time.Millisecond
	for {
		c, err := pl.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				pl.close()
				return
			}
			// Out of descriptors, say: wait and go on, as net/http does.
			select {
			case <-pl.done:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		go pl.route(c)
	}
}

// route reads the first bytes of c and hands it on.
func (pl *peerListener) route(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(preambleTimeout))
	head := make([]byte, preambleLen)
	n, err := io.ReadFull(c, head[:len(peerMagic)])
	if err == nil && (string(head[:n]) == peerMagic || string(head[:n]) == snapMagic) {
		if _, err := io.ReadFull(c, head[n:]); err != nil {
			_ = c.Close()
			return
		}
		_ = c.SetReadDeadline(time.Time{})
		if string(head[:n]) == snapMagic {
			pl.serveSnapshot(c, head)
		} else {
			pl.serveRaft(c, head)
		}
		return
	}
	if n == 0 {
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	select {
	case pl.conns <- &prefixConn{Conn: c, prefix: head[:n]}:
	case <-pl.done:
		_ = c.Close()
	}
}

func (pl *peerListener) Accept() (net.Conn, error) {
	select {
	case c := <-pl.conns:
		return c, nil
	case <-pl.done:
		return nil, net.ErrClosed
	}
}

func (pl *peerListener) close() { pl.closeOnce.Do(func() { close(pl.done) }) }

func (pl *peerListener) Close() error {
	pl.close()
	return pl.Listener.Close()
}

// prefixConn is a connection whose first bytes were already read.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// serveRaft reads the messages of one raft connection until it breaks or
// the transport stops. preamble is the connection's, already read.
func (t *tcpTransport) serveRaft(c net.Conn, preamble []byte) {
	from, ok := t.accept(c, preamble)
	if !ok {
		return
	}
	defer t.untrack(c)
	r := bufio.NewReaderSize(c, 64<<10)
	var (
		buf  []byte
		msgs []raftpb.Message
	)
	for {
		var err error
		if buf, err = readFrame(r, buf, MaxMessageBytes); err != nil {
			if errors.Is(err, errFrameTooLarge) {
				t.logger.Warn("raft frame too large; closing the connection", "from", fmt.Sprintf("%x", from), "err", err)
			}
			return
		}
		if msgs, err = t.stepFrame(buf, from, msgs); err != nil {
			t.logger.Warn("bad raft frame; closing the connection", "from", fmt.Sprintf("%x", from), "err", err)
			return
		}
	}
}

// accept checks the preamble of an accepted raft or snapshot connection
// (cluster, membership, addressee) and tracks the connection so that stop
// closes it. It closes a refused connection; the caller of an accepted one
// must untrack it.
func (t *tcpTransport) accept(c net.Conn, preamble []byte) (from uint64, ok bool) {
	clusterID := binary.LittleEndian.Uint64(preamble[len(peerMagic):])
	from = binary.LittleEndian.Uint64(preamble[len(peerMagic)+8:])
	to := binary.LittleEndian.Uint64(preamble[len(peerMagic)+16:])
	if err := t.checkSender(clusterID, from); err != nil || to != t.self {
		if to != t.self && err == nil {
			t.logger.Warn("refused a peer connection for another node", "from", fmt.Sprintf("%x", from), "to", fmt.Sprintf("%x", to))
		}
		_ = c.Close()
		return 0, false
	}
	if err := t.provesMember(c, from); err != nil {
		t.logger.Warn("refused a peer connection: its certificate does not prove the member it claims to be", "from", fmt.Sprintf("%x", from), "err", err)
		_ = c.Close()
		return 0, false
	}
	if !t.track(c) {
		_ = c.Close()
		return 0, false
	}
	return from, true
}

// errPeerStopped ends a connection's reader when the node stops.
var errPeerStopped = errors.New("raftnode: stopped")

// stepFrame decodes the messages of one frame from node from and steps
// them into raft, all or (if one is bad) none. msgs is scratch space,
// returned for the next frame.
func (t *tcpTransport) stepFrame(b []byte, from uint64, msgs []raftpb.Message) ([]raftpb.Message, error) {
	clear(msgs)
	msgs = msgs[:0]
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return msgs, errors.New("cut message")
		}
		var m raftpb.Message
		if err := m.Unmarshal(b[k : k+int(n)]); err != nil {
			return msgs, errors.New("undecodable message")
		}
		b = b[k+int(n):]
		if m.To != t.self || m.From != from {
			return msgs, fmt.Errorf("message from %x to %x on a connection from %x", m.From, m.To, from)
		}
		if m.Type == raftpb.MsgSnap {
			// A snapshot's data comes on a connection of its own, staged
			// before raft sees the message (snapshot.go).
			return msgs, errors.New("a snapshot in a raft frame")
		}
		msgs = append(msgs, m)
	}
	if _, ok := t.peer(from); !ok {
		// Removed since the connection was accepted: its traffic is
		// refused from now on.
		return msgs, fmt.Errorf("%x is no member any more", from)
	}
	if err := t.local.Step(msgs); err != nil {
		return msgs, errPeerStopped
	}
	return msgs, nil
}

// track registers an inbound connection, so stop can close it; false once
// the transport stopped.
func (t *tcpTransport) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.inbound[c] = struct{}{}
	t.inboundWG.Add(1)
	return true
}

func (t *tcpTransport) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.inbound, c)
	t.mu.Unlock()
	_ = c.Close()
	t.inboundWG.Done()
}

// dial opens a raft (magic peerMagic) or snapshot (snapMagic) connection
// to p and sends its preamble.
func (t *tcpTransport) dial(p *peer, magic string) (net.Conn, error) {
	// Keepalives notice a peer that vanished while the connection is
	// idle; the user timeout, while writes wait for acknowledgements.
	d := net.Dialer{Timeout: time.Second, KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 2 * time.Second, Interval: time.Second, Count: 3}}
	c, err := d.Dial("tcp", p.addr)
	if err != nil {
		return nil, err
	}
	setUserTimeout(c, peerUserTimeout)
	if c, err = t.dialTLS(c, p.id); err != nil {
		return nil, err
	}
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	pre := PeerPreamble(t.clusterID, t.self, p.id)
	copy(pre, magic)
	if _, err := c.Write(pre); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// peerUserTimeout is how long written data may go unacknowledged before
// the connection fails (see setUserTimeout).
const peerUserTimeout = 5 * time.Second

// writeTimeout bounds one frame's write: a peer that reads nothing (hung,
// or cut off without a reset) fills the socket buffers, and the sender
// must give up, report it unreachable and start over rather than block.
// Large frames (snapshots) get time in proportion.
func writeTimeout(bytes int) time.Duration {
	return 5*time.Second + time.Duration(bytes/(1<<20))*time.Second
}

// errFrameTooLarge: a frame header announced more than the limit.
var errFrameTooLarge = errors.New("raftnode: frame too large")

// frameChunk is how much of a frame readFrame allocates ahead of the data:
// a header alone cannot make the receiver allocate more than this, so a
// stranger announcing a huge frame and sending nothing costs nothing.
const frameChunk = 1 << 20

// readFrame reads one frame (length u32 LE, then that many bytes) from r
// into buf (reused when large enough, dropped when a big frame left it
// oversized) and returns the frame's bytes. A length over limit is refused
// before any allocation; the buffer then grows with the data that actually
// arrives, a chunk at a time.
func readFrame(r io.Reader, buf []byte, limit int) ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return buf, err
	}
	size := int(binary.LittleEndian.Uint32(head[:]))
	if size > limit {
		return buf, fmt.Errorf("%w: %d bytes, limit %d", errFrameTooLarge, size, limit)
	}
	if cap(buf) > 4<<20 && size <= 4<<20 {
		buf = nil // do not keep a snapshot-sized buffer for small frames
	}
	buf = buf[:0]
	for len(buf) < size {
		n := min(size-len(buf), frameChunk)
		if cap(buf)-len(buf) < n {
			buf = slices.Grow(buf, n)
		}
		off := len(buf)
		buf = buf[:off+n]
		if _, err := io.ReadFull(r, buf[off:]); err != nil {
			return buf[:0], err
		}
	}
	return buf, nil
}

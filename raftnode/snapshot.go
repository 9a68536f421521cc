package raftnode

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Snapshots travel beside raft, not inside it. Raft's MsgSnap carries only
// the snapshot's metadata; when the transport is handed one, a goroutine of
// that peer's (one transfer per follower at a time) opens the state
// machine's current state (SnapshotStore.OpenSnapshot: a consistent view,
// read lazily), rewrites the message's metadata to the state actually sent
// (never older than raft asked for: it is applied, hence committed), and
// streams it over a connection of its own on the peer port:
//
//	magic "KSSNAP\x00\x01" | cluster id | from | to      (as a raft connection)
//	u32 LE length | raftpb.Message (MsgSnap, metadata only)
//	(u32 LE length | data)...  u32 0                       (chunks of the stream)
//
// The receiver stages the data on disk as it arrives (ReceiveSnapshot:
// checked whole, synced), then steps the MsgSnap into raft, whose Ready
// installs the staged state (ApplySnapshot), and answers one byte: 0 when
// staged and stepped. TCP's flow control paces the sender; neither side
// holds more than a chunk and the store's buffers, whatever the state's
// size. Raft hears SnapshotFinish when the answer is 0 and SnapshotFailure
// otherwise, after a backoff (1 s doubling to 30 s): raft sends no other
// snapshot to that peer until it hears one, so the backoff spaces retries.

// SnapshotStore is the state machine's side of a snapshot transfer: the
// sender streams what OpenSnapshot gives, the receiver stages it with
// ReceiveSnapshot before raft hears of it, and LogStore.ApplySnapshot then
// installs what was staged for that metadata.
type SnapshotStore interface {
	// OpenSnapshot returns the metadata of the state as applied now and a
	// reader of its data, which sees that state until closed.
	OpenSnapshot() (raftpb.SnapshotMetadata, io.ReadCloser, error)
	// ReceiveSnapshot reads a snapshot's data from r and stages it on disk
	// (synced) for ApplySnapshot; the state machine does not change.
	ReceiveSnapshot(md raftpb.SnapshotMetadata, r io.Reader) error
}

// snapMagic starts a snapshot connection (same length as peerMagic).
const snapMagic = "KSSNAP\x00\x01"

const (
	// snapChunk is the most data one chunk carries.
	snapChunk = 1 << 20
	// snapIOTimeout bounds each chunk's write and read: a peer that
	// stops reading or sending fails the transfer.
	snapIOTimeout = 30 * time.Second
	// snapAckTimeout bounds the wait for the receiver's answer after the
	// last chunk (it syncs the staged tables and steps raft).
	snapAckTimeout = 2 * time.Minute
	// maxSnapHeader bounds the MsgSnap that opens a transfer (metadata).
	maxSnapHeader = 1 << 20

	snapBackoffMin = time.Second
	snapBackoffMax = 30 * time.Second
)

// sendSnapshot starts streaming m's snapshot to p, unless a transfer to p
// is under way (its report will settle raft's view of p).
func (t *tcpTransport) sendSnapshot(p *peer, m raftpb.Message) {
	if !p.snapping.CompareAndSwap(false, true) {
		t.logger.Debug("snapshot to peer already under way", "peer", fmt.Sprintf("%x", p.id))
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		start := time.Now()
		bytes, index, err := t.streamSnapshot(p, m)
		status := raft.SnapshotFinish
		if err != nil {
			status = raft.SnapshotFailure
			p.snapBackoff = min(max(2*p.snapBackoff, snapBackoffMin), snapBackoffMax)
			t.logger.Warn("sending snapshot failed; retrying after a backoff", "peer", fmt.Sprintf("%x", p.id),
				"index", index, "bytes", bytes, "backoff", p.snapBackoff, "err", err)
			select {
			case <-p.stopc:
			case <-time.After(p.snapBackoff):
			}
		} else {
			p.snapBackoff = 0
			t.logger.Info("sent snapshot", "peer", fmt.Sprintf("%x", p.id), "index", index,
				"bytes", bytes, "duration", time.Since(start).Round(time.Millisecond))
		}
		// Free the slot before raft hears: its next MsgSnap to p comes
		// only after the report.
		p.snapping.Store(false)
		t.local.ReportSnapshot(p.id, status)
	}()
}

// streamSnapshot sends the current state to p as the snapshot of m. It
// returns the data bytes sent and the snapshot's index.
func (t *tcpTransport) streamSnapshot(p *peer, m raftpb.Message) (sent int64, index uint64, err error) {
	md, data, err := t.local.OpenSnapshot()
	if err != nil {
		return 0, 0, fmt.Errorf("open snapshot: %w", err)
	}
	defer data.Close()
	if m.Snapshot != nil && md.Index < m.Snapshot.Metadata.Index {
		return 0, md.Index, fmt.Errorf("state at %d is behind the snapshot raft asked for (%d)", md.Index, m.Snapshot.Metadata.Index)
	}
	snap := raftpb.Snapshot{Metadata: md}
	if m.Snapshot != nil {
		snap.Data = m.Snapshot.Data
	}
	m.Snapshot = &snap
	head, err := m.Marshal()
	if err != nil {
		return 0, md.Index, err
	}
	conn, err := t.dial(p, snapMagic)
	if err != nil {
		return 0, md.Index, err
	}
	p.mu.Lock()
	p.snapConn = conn
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.snapConn = nil
		p.mu.Unlock()
		_ = conn.Close()
	}()
	select {
	case <-p.stopc: // stop may have looked before snapConn was set
		return 0, md.Index, errPeerStopped
	default:
	}
	w := bufio.NewWriterSize(conn, 64<<10)
	buf := make([]byte, 4+snapChunk)
	writeChunk := func(b []byte) error {
		_ = conn.SetWriteDeadline(time.Now().Add(snapIOTimeout))
		var n [4]byte
		binary.LittleEndian.PutUint32(n[:], uint32(len(b)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		_, err := w.Write(b)
		return err
	}
	if err := writeChunk(head); err != nil {
		return 0, md.Index, err
	}
	for {
		n, rerr := io.ReadFull(data, buf[:snapChunk])
		if n > 0 {
			if err := writeChunk(buf[:n]); err != nil {
				return sent, md.Index, err
			}
			sent += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return sent, md.Index, fmt.Errorf("read snapshot: %w", rerr)
		}
	}
	if err := writeChunk(nil); err != nil {
		return sent, md.Index, err
	}
	if err := w.Flush(); err != nil {
		return sent, md.Index, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(snapAckTimeout))
	var ack [1]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		return sent, md.Index, fmt.Errorf("no answer from the receiver: %w", err)
	}
	if ack[0] != 0 {
		return sent, md.Index, errors.New("the receiver refused the snapshot (see its log)")
	}
	return sent, md.Index, nil
}

// serveSnapshot receives one snapshot on c, whose preamble was read.
func (t *tcpTransport) serveSnapshot(c net.Conn, preamble []byte) {
	from, ok := t.accept(c, preamble)
	if !ok {
		return
	}
	defer t.untrack(c)
	start := time.Now()
	cr := &chunkReader{c: c, r: bufio.NewReaderSize(c, 64<<10)}
	m, err := cr.header()
	if err == nil && (m.Type != raftpb.MsgSnap || m.From != from || m.To != t.self || m.Snapshot == nil) {
		err = fmt.Errorf("a %v from %x to %x on a snapshot connection from %x", m.Type, m.From, m.To, from)
	}
	if err == nil {
		// One snapshot at a time: a second sender (an old leader's
		// transfer still running) is refused and retries later.
		err = t.local.ReceiveSnapshot(m, cr)
	}
	ack := []byte{0}
	switch {
	case errors.Is(err, errSnapshotBusy):
		t.logger.Info("refused a snapshot while receiving another", "from", fmt.Sprintf("%x", from))
		return
	case err != nil:
		ack[0] = 1
		t.logger.Warn("receiving snapshot failed", "from", fmt.Sprintf("%x", from), "err", err)
	default:
		t.logger.Info("received snapshot", "from", fmt.Sprintf("%x", from), "index", m.Snapshot.Metadata.Index,
			"bytes", cr.bytes, "duration", time.Since(start).Round(time.Millisecond))
	}
	_ = c.SetWriteDeadline(time.Now().Add(snapIOTimeout))
	_, _ = c.Write(ack)
}

// chunkReader reads a snapshot connection: the header message, then the
// data chunks as one stream, which ends at the empty chunk.
type chunkReader struct {
	c     net.Conn
	r     *bufio.Reader
	left  int  // bytes left in the current chunk
	end   bool // the empty chunk was read
	bytes int64
}

func (cr *chunkReader) next() (int, error) {
	_ = cr.c.SetReadDeadline(time.Now().Add(snapIOTimeout))
	var n [4]byte
	if _, err := io.ReadFull(cr.r, n[:]); err != nil {
		return 0, err
	}
	size := binary.LittleEndian.Uint32(n[:])
	if size > snapChunk {
		return 0, fmt.Errorf("snapshot chunk of %d bytes exceeds %d", size, snapChunk)
	}
	return int(size), nil
}

func (cr *chunkReader) header() (raftpb.Message, error) {
	var m raftpb.Message
	n, err := cr.next()
	if err != nil {
		return m, err
	}
	if n == 0 || n > maxSnapHeader {
		return m, fmt.Errorf("snapshot header of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(cr.r, b); err != nil {
		return m, err
	}
	if err := m.Unmarshal(b); err != nil {
		return m, errors.New("undecodable snapshot header")
	}
	return m, nil
}

func (cr *chunkReader) Read(p []byte) (int, error) {
	for cr.left == 0 {
		if cr.end {
			return 0, io.EOF
		}
		n, err := cr.next()
		if err != nil {
			return 0, err
		}
		if n == 0 {
			cr.end = true
		}
		cr.left = n
	}
	if len(p) > cr.left {
		p = p[:cr.left]
	}
	_ = cr.c.SetReadDeadline(time.Now().Add(snapIOTimeout))
	n, err := cr.r.Read(p)
	cr.left -= n
	cr.bytes += int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

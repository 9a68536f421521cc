package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The in-memory twin of the TCP transport (tcp.go, snapshot.go), for tests
// of whole clusters in one process, and the fault seam they use: links cut
// one way or both (Disconnect, Isolate, Partition, Heal), delayed
// (SetDelay) and lossy (SetDrop).
//
// Each node's transport has one queue and one goroutine per peer it sends
// to; Send only queues, so it never blocks and never calls into raft (the
// node calls it while handling a Ready). The goroutine delivers, in order,
// every message whose delay has passed as one frame to the receiver's
// Local.Step, and reports a lost message to its own node's
// Local.ReportUnreachable. Snapshots are streamed beside the queue through
// an io.Pipe (one transfer per peer at a time, like tcp's), and Forward
// calls the leader's Local.ProposeForwarded, both subject to the links'
// cuts and delays.
//
// A message's fate is decided twice: when it is sent (a cut link, an
// unknown or stopped peer, a full queue, or the drop rate loses it) and
// when it is due (a link cut meanwhile loses it too, as a partition loses
// what is in flight). Drops apply to raft messages only: snapshots and
// forwarded proposals ride streams (a snapshot connection, gRPC) that a
// lossy network slows down but does not cut short.

// InmemNetwork connects the in-memory transports it hands out (Transport)
// and injects faults between them. Links are directed, from one node to
// another; all are up, prompt and lossless until told otherwise. Its
// methods are safe for concurrent use, also while traffic flows: a change
// applies to messages sent after it and, for cuts, to those still in
// flight.
type InmemNetwork struct {
	mu    sync.Mutex
	rng   *rand.Rand // drop decisions; under mu
	nodes map[uint64]*inmemTransport
	links map[inmemLink]inmemFaults
}

// inmemLink names one direction between two nodes.
type inmemLink struct{ from, to uint64 }

// inmemFaults are a link's faults; the zero value is a healthy link.
type inmemFaults struct {
	cut   bool
	delay time.Duration
	drop  float64
}

// Errors of the in-memory transport, wrapped in errRetry by Forward.
var (
	errInmemCut     = errors.New("raftnode: inmem: link cut")
	errInmemUnknown = errors.New("raftnode: inmem: peer unknown or stopped")
	errInmemStopped = errors.New("raftnode: inmem: transport stopped")
)

// NewInmemNetwork returns a network with every link healthy. seed seeds the
// drop decisions: a run that sends the same messages in the same order
// loses the same ones.
func NewInmemNetwork(seed uint64) *InmemNetwork {
	return &InmemNetwork{
		rng:   rand.New(rand.NewPCG(seed, 0x6b657973746f7265)),
		nodes: make(map[uint64]*inmemTransport),
		links: make(map[inmemLink]inmemFaults),
	}
}

// Transport returns a new transport for node id (Config.Transport), which
// receives what is sent to id from then on. Asking again for the same id
// replaces the earlier transport, which should have been stopped first (a
// node restarting).
func (nw *InmemNetwork) Transport(id uint64) Transport {
	t := &inmemTransport{nw: nw, id: id, queues: make(map[uint64]*inmemQueue), stopc: make(chan struct{})}
	nw.mu.Lock()
	nw.nodes[id] = t
	nw.mu.Unlock()
	return t
}

// Disconnect cuts the links between a and b, both ways.
func (nw *InmemNetwork) Disconnect(a, b uint64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.setCut(a, b, true)
	nw.setCut(b, a, true)
}

// Connect restores the links between a and b, both ways, whatever cut
// them.
func (nw *InmemNetwork) Connect(a, b uint64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.setCut(a, b, false)
	nw.setCut(b, a, false)
}

// DisconnectOneWay cuts the link from from to to only: to still reaches
// from.
func (nw *InmemNetwork) DisconnectOneWay(from, to uint64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.setCut(from, to, true)
}

// ConnectOneWay restores the link from from to to only.
func (nw *InmemNetwork) ConnectOneWay(from, to uint64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.setCut(from, to, false)
}

// Isolate cuts the links, both ways, between id and every other node the
// network has handed a transport.
func (nw *InmemNetwork) Isolate(id uint64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for other := range nw.nodes {
		if other != id {
			nw.setCut(id, other, true)
			nw.setCut(other, id, true)
		}
	}
}

// Partition cuts the links, both ways, between every two nodes in
// different groups. Links within a group, and those of nodes in no group,
// are left as they are.
func (nw *InmemNetwork) Partition(groups ...[]uint64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for i, g := range groups {
		for _, h := range groups[i+1:] {
			for _, a := range g {
				for _, b := range h {
					nw.setCut(a, b, true)
					nw.setCut(b, a, true)
				}
			}
		}
	}
}

// Heal restores every cut link. Delays and drop rates stay.
func (nw *InmemNetwork) Heal() {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for l := range nw.links {
		nw.setCut(l.from, l.to, false)
	}
}

// SetDelay delays what travels from from to to by d: raft messages are
// delivered d after they were sent (in order, so one sent later never
// overtakes one delayed longer), snapshots start d late, and a forwarded
// proposal takes d on its way (and the link back's delay on the way
// back). 0 removes the delay.
func (nw *InmemNetwork) SetDelay(from, to uint64, d time.Duration) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	f := nw.links[inmemLink{from, to}]
	f.delay = max(d, 0)
	nw.set(from, to, f)
}

// SetDrop makes the link from from to to lose each raft message with
// probability p (0 never, 1 always), decided when it is sent; the sender's
// raft hears of each loss (ReportUnreachable).
func (nw *InmemNetwork) SetDrop(from, to uint64, p float64) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	f := nw.links[inmemLink{from, to}]
	f.drop = p
	nw.set(from, to, f)
}

// setCut and set change a link (nw.mu held).
func (nw *InmemNetwork) setCut(from, to uint64, cut bool) {
	f := nw.links[inmemLink{from, to}]
	f.cut = cut
	nw.set(from, to, f)
}

func (nw *InmemNetwork) set(from, to uint64, f inmemFaults) {
	if f == (inmemFaults{}) {
		delete(nw.links, inmemLink{from, to})
		return
	}
	nw.links[inmemLink{from, to}] = f
}

// admit decides the fate of a raft message sent now from from to to: lost,
// or due after delay.
func (nw *InmemNetwork) admit(from, to uint64) (lost bool, delay time.Duration) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	f := nw.links[inmemLink{from, to}]
	if f.cut || nw.nodes[to] == nil {
		return true, 0
	}
	if f.drop > 0 && nw.rng.Float64() < f.drop {
		return true, 0
	}
	return false, f.delay
}

// route returns the transport of to if the link from from reaches it now.
func (nw *InmemNetwork) route(from, to uint64) *inmemTransport {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.links[inmemLink{from, to}].cut {
		return nil
	}
	return nw.nodes[to]
}

// travel waits out the link's delay; it fails if the link is cut before or
// after, or ctx ends first.
func (nw *InmemNetwork) travel(ctx context.Context, from, to uint64) error {
	nw.mu.Lock()
	f := nw.links[inmemLink{from, to}]
	nw.mu.Unlock()
	if f.cut {
		return errInmemCut
	}
	if f.delay > 0 {
		timer := time.NewTimer(f.delay)
		defer timer.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
	}
	if nw.route(from, to) == nil {
		return errInmemCut
	}
	return nil
}

// inmemTransport is one node's Transport on an InmemNetwork.
type inmemTransport struct {
	nw    *InmemNetwork
	id    uint64
	local Local // set by Start, before any goroutine

	stopc chan struct{} // closed when Stop begins
	wg    sync.WaitGroup
	// inbound counts calls into local made by other nodes' goroutines
	// (delivery, snapshots, forwards); Stop waits for them.
	inbound sync.WaitGroup

	mu      sync.Mutex
	started bool
	stopped bool
	queues  map[uint64]*inmemQueue // by peer
}

// inmemQueue holds the raft messages on their way to one peer; the
// transport's goroutine for it (deliverLoop) delivers them.
type inmemQueue struct {
	to   uint64
	wake chan struct{} // room for one signal

	mu   sync.Mutex
	msgs []inmemMsg
	// lost is set when a message to the peer was lost since the sender's
	// raft last heard of it (one report covers them all).
	lost bool

	// snapping is set while a snapshot transfer to the peer runs.
	snapping atomic.Bool
}

type inmemMsg struct {
	m   raftpb.Message
	due time.Time
}

// Start implements Transport.
func (t *inmemTransport) Start(local Local) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started || t.stopped {
		return errors.New("raftnode: inmem transport started twice, or after Stop")
	}
	t.local, t.started = local, true
	return nil
}

// Stop implements Transport. After it returns, nothing reaches this node's
// Local, and what is sent to the node is lost.
func (t *inmemTransport) Stop() {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return
	}
	t.stopped = true
	close(t.stopc)
	t.mu.Unlock()
	t.wg.Wait()
	t.inbound.Wait()
}

// enter admits a call into t's Local from another node's goroutine; false
// once t stopped (or before it started). The caller must exit.
func (t *inmemTransport) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.started || t.stopped {
		return false
	}
	t.inbound.Add(1)
	return true
}

func (t *inmemTransport) exit() { t.inbound.Done() }

// spawn runs f on a goroutine Stop waits for, unless t stopped.
func (t *inmemTransport) spawn(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.started || t.stopped {
		return false
	}
	t.goLocked(f)
	return true
}

// goLocked runs f on a goroutine Stop waits for (t.mu held, t running).
func (t *inmemTransport) goLocked(f func()) {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f()
	}()
}

// queue returns the queue to peer to, starting its goroutine the first
// time; nil once t stopped.
func (t *inmemTransport) queue(to uint64) *inmemQueue {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.started || t.stopped {
		return nil
	}
	q := t.queues[to]
	if q == nil {
		q = &inmemQueue{to: to, wake: make(chan struct{}, 1)}
		t.queues[to] = q
		t.goLocked(func() { t.deliverLoop(q) })
	}
	return q
}

// Send implements Transport. It queues a copy of each message, as the
// wire would deliver it (marshalled, then unmarshalled), never the message
// itself: its entries are slices of the sender's raft log, and raft keeps
// what it receives (a follower may adopt an append's entries slice as its
// own unstable log, unstable.truncateAndAppend). raft v3.6 hands out
// capped slices and never writes an entry it handed out, so sharing would
// likely go unnoticed; but then two nodes' rafts would share memory as no
// network lets them, and a bug that writes into a received or sent entry
// would corrupt a peer in tests only, or hide. A copy is also what makes
// holding messages past Advance (delays) obviously safe.
func (t *inmemTransport) Send(msgs []raftpb.Message) {
	for i := range msgs {
		m := &msgs[i]
		if m.To == t.id {
			continue
		}
		q := t.queue(m.To)
		if q == nil {
			return // stopped
		}
		if m.Type == raftpb.MsgSnap {
			t.sendSnapshot(q, *m)
			continue
		}
		lost, delay := t.nw.admit(t.id, m.To)
		var c raftpb.Message
		if !lost {
			lost = !copyMessage(&c, m)
		}
		q.mu.Lock()
		if lost || len(q.msgs) >= peerQueue {
			q.lost = true
		} else {
			q.msgs = append(q.msgs, inmemMsg{m: c, due: time.Now().Add(delay)})
		}
		q.mu.Unlock()
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// copyMessage sets dst to a copy of src that shares no memory with it.
func copyMessage(dst, src *raftpb.Message) bool {
	b, err := src.Marshal()
	return err == nil && dst.Unmarshal(b) == nil
}

// deliverLoop delivers q's messages as they fall due, and reports losses
// to t's raft, until t stops.
func (t *inmemTransport) deliverLoop(q *inmemQueue) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-t.stopc:
			return
		default:
		}
		q.mu.Lock()
		lost := q.lost
		q.lost = false
		now := time.Now()
		k := 0
		for k < len(q.msgs) && !q.msgs[k].due.After(now) {
			k++
		}
		var batch []raftpb.Message
		if k > 0 {
			batch = make([]raftpb.Message, k)
			for i := range k {
				batch[i] = q.msgs[i].m
			}
			rest := copy(q.msgs, q.msgs[k:])
			clear(q.msgs[rest:])
			q.msgs = q.msgs[:rest]
		}
		wait := time.Duration(-1)
		if len(q.msgs) > 0 {
			wait = max(q.msgs[0].due.Sub(now), 0)
		}
		q.mu.Unlock()

		if len(batch) > 0 && !t.deliver(q.to, batch) {
			lost = true
		}
		if lost {
			t.local.ReportUnreachable(q.to)
		}
		if len(batch) > 0 || lost {
			continue // look again before sleeping
		}
		var due <-chan time.Time
		if wait >= 0 {
			timer.Reset(wait)
			due = timer.C
		}
		select {
		case <-t.stopc:
			return
		case <-q.wake:
		case <-due:
		}
		timer.Stop()
	}
}

// deliver steps batch, one frame, into to's raft if the link reaches it
// now.
func (t *inmemTransport) deliver(to uint64, batch []raftpb.Message) bool {
	dst := t.nw.route(t.id, to)
	if dst == nil || !dst.enter() {
		return false
	}
	defer dst.exit()
	return dst.local.Step(batch) == nil
}

// sendSnapshot starts streaming m's snapshot to q's peer, unless a
// transfer to it is under way (its report settles raft's view of the
// peer). Raft hears how it ended: SnapshotFinish once the receiver staged
// it and stepped m, SnapshotFailure otherwise. Unlike tcp's, a failure is
// reported at once, with no backoff: raft asks again only after the peer
// answers a heartbeat, which paces the retries well enough in tests.
func (t *inmemTransport) sendSnapshot(q *inmemQueue, m raftpb.Message) {
	if !q.snapping.CompareAndSwap(false, true) {
		return
	}
	if !t.spawn(func() {
		status := raft.SnapshotFinish
		if err := t.streamSnapshot(q.to, m); err != nil {
			status = raft.SnapshotFailure
		}
		// Free the slot before raft hears: its next MsgSnap to the peer
		// comes only after the report.
		q.snapping.Store(false)
		t.local.ReportSnapshot(q.to, status)
	}) {
		q.snapping.Store(false)
	}
}

// streamSnapshot sends this node's current state to node to as the
// snapshot of m, as tcp's streamSnapshot does: the metadata is rewritten to
// the state actually sent, never older than raft asked for.
func (t *inmemTransport) streamSnapshot(to uint64, m raftpb.Message) error {
	ctx, cancel := withStop(context.Background(), t.stopc)
	defer cancel()
	if err := t.nw.travel(ctx, t.id, to); err != nil {
		return err
	}
	dst := t.nw.route(t.id, to)
	if dst == nil {
		return errInmemUnknown
	}
	md, data, err := t.local.OpenSnapshot()
	if err != nil {
		return fmt.Errorf("open snapshot: %w", err)
	}
	defer data.Close()
	if m.Snapshot != nil && md.Index < m.Snapshot.Metadata.Index {
		return fmt.Errorf("state at %d is behind the snapshot raft asked for (%d)", md.Index, m.Snapshot.Metadata.Index)
	}
	snap := raftpb.Snapshot{Metadata: md}
	if m.Snapshot != nil {
		snap.Data = m.Snapshot.Data
	}
	m.Snapshot = &snap
	var c raftpb.Message
	if !copyMessage(&c, &m) {
		return errors.New("unencodable snapshot message")
	}
	if !dst.enter() {
		return errInmemUnknown
	}
	pr, pw := io.Pipe()
	received := make(chan error, 1)
	go func() {
		defer dst.exit()
		err := dst.local.ReceiveSnapshot(c, pr)
		_ = pr.CloseWithError(errors.New("receiver returned"))
		received <- err
	}()
	// Either node stopping ends the transfer (closing the pipe unblocks
	// both ends).
	watched := make(chan struct{})
	go func() {
		select {
		case <-t.stopc:
			_ = pr.CloseWithError(errInmemStopped)
		case <-dst.stopc:
			_ = pr.CloseWithError(errInmemStopped)
		case <-watched:
		}
	}()
	defer close(watched)

	serr := t.copySnapshot(to, pw, data)
	_ = pw.CloseWithError(serr) // nil: the receiver reads io.EOF
	if rerr := <-received; serr == nil {
		serr = rerr
	}
	if serr != nil {
		return serr
	}
	// The receiver's answer must come back.
	return t.nw.travel(ctx, to, t.id)
}

// copySnapshot copies data into w while the link to to stays up.
func (t *inmemTransport) copySnapshot(to uint64, w io.Writer, data io.Reader) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := data.Read(buf)
		if n > 0 {
			if t.nw.route(t.id, to) == nil {
				return errInmemCut
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
	}
}

// Forward implements Transport: it proposes on node to's Local, if the
// links there and back are up, and answers as tcpTransport.Forward does.
func (t *inmemTransport) Forward(ctx context.Context, to, reqID uint64, command []byte) (*statev1.Result, uint64, error) {
	res, index, err := t.forward(ctx, to, reqID, command)
	switch {
	case err == nil:
		return res, index, nil
	case ctx.Err() != nil:
		return nil, 0, ErrTimeout
	case errors.Is(err, ErrOverloaded):
		return nil, 0, ErrOverloaded
	case errors.Is(err, ErrRefused):
		return nil, 0, ErrRefused
	default:
		// Not leader, leadership changed, the leader stopped, the link
		// is cut: a retry with the same request id is safe.
		return nil, 0, fmt.Errorf("%w: forward to %x: %v", errRetry, to, err)
	}
}

func (t *inmemTransport) forward(ctx context.Context, to, reqID uint64, command []byte) (*statev1.Result, uint64, error) {
	if reqID == 0 {
		return nil, 0, errors.New("request id required")
	}
	var (
		res   *statev1.Result
		index uint64
	)
	err := t.call(ctx, to, func(ctx context.Context, dst Local) (err error) {
		res, index, err = dst.ProposeForwarded(ctx, reqID, command)
		// The answer travels back (the copy a decoded response would be).
		if err == nil && res != nil {
			res = proto.Clone(res).(*statev1.Result)
		}
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return res, index, nil
}

// call runs fn on to's Local as a request over the link from t to to and
// its answer over the link back would: it waits out each way's delay and
// fails when either way is cut, when either end stops, or when to is
// unknown.
func (t *inmemTransport) call(ctx context.Context, to uint64, fn func(ctx context.Context, dst Local) error) error {
	select {
	case <-t.stopc:
		return errInmemStopped
	default:
	}
	ctx, cancel := withStop(ctx, t.stopc)
	defer cancel()
	if err := t.nw.travel(ctx, t.id, to); err != nil {
		return err
	}
	dst := t.nw.route(t.id, to)
	if dst == nil || !dst.enter() {
		return errInmemUnknown
	}
	dctx, dcancel := withStop(ctx, dst.stopc)
	err := fn(dctx, dst.local)
	dcancel()
	dst.exit()
	if err != nil {
		return err
	}
	return t.nw.travel(ctx, to, t.id)
}

// withStop returns a context that also ends when stopc closes; cancel
// releases its goroutine.
func withStop(ctx context.Context, stopc <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-stopc:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// ForwardConfChange implements Transport, as Forward does.
func (t *inmemTransport) ForwardConfChange(ctx context.Context, to uint64, cc []byte) (uint64, error) {
	index, err := t.forwardConfChange(ctx, to, cc)
	switch {
	case err == nil:
		return index, nil
	case ctx.Err() != nil:
		return 0, ErrTimeout
	case errors.Is(err, ErrMembership):
		return 0, err
	default:
		return 0, fmt.Errorf("%w: forward to %x: %v", errRetry, to, err)
	}
}

func (t *inmemTransport) forwardConfChange(ctx context.Context, to uint64, cc []byte) (uint64, error) {
	var index uint64
	err := t.call(ctx, to, func(ctx context.Context, dst Local) (err error) {
		index, err = dst.ProposeConfChangeForwarded(ctx, cc)
		return err
	})
	return index, err
}

// AddPeer implements Transport. The network routes to every transport it
// handed out, so a member needs nothing more; faults stay per link.
func (t *inmemTransport) AddPeer(uint64, string) {}

// RemovePeer implements Transport (see AddPeer).
func (t *inmemTransport) RemovePeer(uint64) {}

// Hello implements Transport: it asks to's Local, if the link is up.
func (t *inmemTransport) Hello(ctx context.Context, to uint64) (HelloInfo, error) {
	var h HelloInfo
	err := t.call(ctx, to, func(_ context.Context, dst Local) error {
		h = dst.Hello(t.id)
		return nil
	})
	return h, err
}

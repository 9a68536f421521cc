package raftnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keystore-dev/keystore/entry"
	peerv1 "github.com/keystore-dev/keystore/proto/keystore/peer/v1"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// MaxMessageBytes is the largest frame of raft messages (and a Forward's
// message). Snapshots do not travel in frames (snapshot.go); a frame holds
// at most maxBatchBytes of messages or one larger entry, whose size the
// API bounds (api.MaxEntryBytes, well below this). A receiver refuses a
// larger frame from its header, and allocates only as its data arrives.
const MaxMessageBytes = 64 << 20

const (
	// peerQueue is how many messages wait for one peer before new ones are
	// dropped (raft retransmits what matters).
	peerQueue = 4096
	// maxBatchBytes bounds one frame (snapshots excepted).
	maxBatchBytes = 4 << 20
	// commitHold is how long an append without entries waits for a later
	// append to the same peer, which replaces it (see send).
	commitHold = 2 * time.Millisecond
)

// tcpTransport is the Transport keystore runs on: raft messages go over
// one long-lived TCP connection per peer (rawpeer.go), fed by a queue;
// whatever queued while a frame was written goes out in the next frame.
// Snapshots stream on connections of their own (snapshot.go); Forward goes
// over gRPC (PeerServer). Inbound connections arrive through the peer
// port's listener (SplitPeerListener).
type tcpTransport struct {
	self       uint64
	clusterID  uint64
	commitHold time.Duration // <= 0: commit-only appends go out at once
	local      Local
	logger     *slog.Logger
	wg         sync.WaitGroup
	// tls secures every peer connection (nil: plaintext); nameOf names
	// members, for its identity checks.
	tls    *PeerTLS
	nameOf func(id uint64) string

	// pmu guards the members: peers (self excluded), whether their
	// senders run (started) and whether Stop closed them.
	pmu          sync.RWMutex
	peers        map[uint64]*peer
	started      bool
	stoppedPeers bool
	stopc        chan struct{}

	// Inbound raft connections, closed by stop.
	mu        sync.Mutex
	stopped   bool
	inbound   map[net.Conn]struct{}
	inboundWG sync.WaitGroup
}

type peer struct {
	id     uint64
	addr   string
	conn   *grpc.ClientConn // for Forward
	client peerv1.PeerServiceClient
	queue  chan raftpb.Message
	stopc  chan struct{} // closed when the peer is removed or the transport stops

	// An append without entries waiting out commitHold (see send): held
	// is valid while holding; the timer releases it.
	hmu     sync.Mutex
	held    raftpb.Message
	holding bool
	hold    *time.Timer

	// raft is the outbound raft connection while one is open, snapConn
	// the snapshot transfer's; stop closes them to end a blocked write.
	mu       sync.Mutex
	raft     net.Conn
	snapConn net.Conn

	// snapping is set while a snapshot transfer to the peer runs;
	// snapBackoff is its goroutine's (one at a time).
	snapping    atomic.Bool
	snapBackoff time.Duration
}

// newTCPTransport returns the transport of node self of cluster clusterID,
// whose members (self included) are at addrs.
func newTCPTransport(self, clusterID uint64, addrs map[uint64]string, commitHold time.Duration, logger *slog.Logger) *tcpTransport {
	t := &tcpTransport{self: self, clusterID: clusterID, commitHold: commitHold, logger: logger, peers: make(map[uint64]*peer), stopc: make(chan struct{}), inbound: make(map[net.Conn]struct{})}
	for id, addr := range addrs {
		if id != self {
			t.peers[id] = t.newPeer(id, addr)
		}
	}
	return t
}

func (t *tcpTransport) newPeer(id uint64, addr string) *peer {
	p := &peer{id: id, addr: addr, queue: make(chan raftpb.Message, peerQueue), stopc: make(chan struct{})}
	p.hold = time.AfterFunc(time.Hour, func() { t.release(p) })
	p.hold.Stop()
	return p
}

// startPeer dials p's gRPC connection (lazily) and starts its sender.
func (t *tcpTransport) startPeer(p *peer) {
	creds := insecure.NewCredentials()
	if t.tls != nil {
		creds = credentials.NewTLS(t.tls.Client(t.nameOf(p.id)))
	}
	conn, err := grpc.NewClient(p.addr,
		grpc.WithTransportCredentials(creds),
		// Fixed windows turn off gRPC's bandwidth-delay probe (a PING
		// and its ACK for nearly every message); see DESIGN.md.
		grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(MaxMessageBytes), grpc.MaxCallRecvMsgSize(MaxMessageBytes)),
	)
	if err != nil {
		// NewClient fails only on a malformed target; keep the peer
		// unreachable.
		t.logger.Error("bad peer address", "peer", fmt.Sprintf("%x", p.id), "addr", p.addr, "err", err)
		return
	}
	p.conn, p.client = conn, peerv1.NewPeerServiceClient(conn)
	t.wg.Add(1)
	go t.sendLoop(p)
}

// closePeer ends p's sender and its connections (a removed peer, or Stop).
func (t *tcpTransport) closePeer(p *peer) {
	close(p.stopc)
	p.hold.Stop()
	p.mu.Lock()
	if p.raft != nil {
		_ = p.raft.Close()
	}
	if p.snapConn != nil {
		_ = p.snapConn.Close()
	}
	p.mu.Unlock()
}

// peer returns the peer id, if it is a member.
func (t *tcpTransport) peer(id uint64) (*peer, bool) {
	t.pmu.RLock()
	defer t.pmu.RUnlock()
	p, ok := t.peers[id]
	return p, ok
}

// Start implements Transport.
func (t *tcpTransport) Start(local Local) error {
	t.local = local
	t.pmu.Lock()
	defer t.pmu.Unlock()
	t.started = true
	for _, p := range t.peers {
		t.startPeer(p)
	}
	return nil
}

// AddPeer implements Transport: id is a member at addr from now on (a new
// address replaces the old one).
func (t *tcpTransport) AddPeer(id uint64, addr string) {
	if id == t.self || addr == "" {
		return
	}
	t.pmu.Lock()
	defer t.pmu.Unlock()
	if t.stoppedPeers {
		return
	}
	if old, ok := t.peers[id]; ok {
		if old.addr == addr {
			return
		}
		t.dropPeerLocked(old)
	}
	p := t.newPeer(id, addr)
	t.peers[id] = p
	if t.started {
		t.startPeer(p)
	}
	t.logger.Info("peer added", "peer", fmt.Sprintf("%x", id), "addr", addr)
}

// RemovePeer implements Transport: id is no member any more; its messages
// are refused.
func (t *tcpTransport) RemovePeer(id uint64) {
	t.pmu.Lock()
	defer t.pmu.Unlock()
	if p, ok := t.peers[id]; ok && !t.stoppedPeers {
		t.dropPeerLocked(p)
		t.logger.Info("peer removed", "peer", fmt.Sprintf("%x", id))
	}
}

func (t *tcpTransport) dropPeerLocked(p *peer) {
	delete(t.peers, p.id)
	t.closePeer(p)
	if p.conn != nil {
		_ = p.conn.Close()
	}
}

// Stop implements Transport.
func (t *tcpTransport) Stop() {
	close(t.stopc)
	t.pmu.Lock()
	t.stoppedPeers = true
	for _, p := range t.peers {
		t.closePeer(p)
	}
	t.pmu.Unlock()
	t.wg.Wait()
	t.pmu.RLock()
	for _, p := range t.peers {
		if p.conn != nil {
			_ = p.conn.Close()
		}
	}
	t.pmu.RUnlock()
	t.mu.Lock()
	t.stopped = true
	for c := range t.inbound {
		_ = c.Close()
	}
	t.mu.Unlock()
	t.inboundWG.Wait()
}

// Send implements Transport: it queues msgs without blocking the Ready
// loop.
//
// An append without entries is held back for up to commitHold. A leader
// sends one to each follower whenever its commit index moves (and as a
// probe); the follower answers it, so each costs a frame, a wake-up and a
// Ready on both sides, and at one client it doubled the messages of a
// write. The leader's next append to that peer carries the commit index
// too and replaces the held one; if none comes within commitHold, the held
// one goes out. Holding or dropping a message is safe in Raft (messages may
// be late or lost); what it delays is only when a follower learns of a
// commit, which heartbeats and ReadIndex rounds also carry.
func (t *tcpTransport) Send(msgs []raftpb.Message) {
	t.pmu.RLock()
	defer t.pmu.RUnlock()
	for _, m := range msgs {
		p, ok := t.peers[m.To]
		if !ok {
			continue
		}
		if m.Type == raftpb.MsgSnap {
			t.sendSnapshot(p, m) // streamed beside the queue (snapshot.go)
			continue
		}
		if m.Type != raftpb.MsgApp {
			t.enqueue(p, m)
			continue
		}
		p.hmu.Lock()
		if len(m.Entries) == 0 && t.commitHold > 0 {
			if !p.holding {
				p.hold.Reset(t.commitHold)
			}
			p.held, p.holding = m, true
			p.hmu.Unlock()
			continue
		}
		p.held, p.holding = raftpb.Message{}, false
		queued := p.offer(m)
		p.hmu.Unlock()
		if !queued {
			t.dropped(m)
		}
	}
}

// release sends p's held append, if it is still held, when commitHold has
// passed.
func (t *tcpTransport) release(p *peer) {
	p.hmu.Lock()
	if !p.holding {
		p.hmu.Unlock()
		return
	}
	m := p.held
	p.held, p.holding = raftpb.Message{}, false
	queued := p.offer(m) // under hmu: no later append overtakes it
	p.hmu.Unlock()
	if !queued {
		t.dropped(m)
	}
}

// releaseAll sends every held append now.
func (t *tcpTransport) releaseAll() {
	t.pmu.RLock()
	defer t.pmu.RUnlock()
	for _, p := range t.peers {
		t.release(p)
	}
}

func (t *tcpTransport) enqueue(p *peer, m raftpb.Message) {
	if !p.offer(m) {
		t.dropped(m)
	}
}

// offer queues m unless p's queue is full.
func (p *peer) offer(m raftpb.Message) bool {
	select {
	case p.queue <- m:
		return true
	default:
		return false
	}
}

// dropped tells raft that m did not go out (a full queue).
func (t *tcpTransport) dropped(m raftpb.Message) {
	t.local.ReportUnreachable(m.To)
}

// sendLoop owns p's raft connection: it writes queued messages in frames
// and reconnects (with backoff) when the connection breaks.
func (t *tcpTransport) sendLoop(p *peer) {
	defer t.wg.Done()
	var (
		conn    net.Conn
		backoff = 50 * time.Millisecond
		batch   []raftpb.Message // reused: the frame is a copy
		buf     []byte
	)
	closeConn := func() {
		if conn != nil {
			_ = conn.Close()
			conn = nil
			p.mu.Lock()
			p.raft = nil
			p.mu.Unlock()
		}
	}
	defer closeConn()
	for {
		var first raftpb.Message
		select {
		case <-p.stopc:
			return
		case first = <-p.queue:
		}
		clear(batch) // let go of the last batch's entries
		batch = append(batch[:0], first)
		size := first.Size()
		owned := false // the last message's entries are a slice of our own
	drain:
		for size < maxBatchBytes {
			select {
			case m := <-p.queue:
				var ok bool
				if ok, owned = mergeAppend(&batch[len(batch)-1], &m, owned); !ok {
					batch, owned = append(batch, m), false
				}
				size += m.Size()
			default:
				break drain
			}
		}
		var err error
		buf, err = appendFrame(buf[:0], batch)
		if err != nil {
			// Not the connection's fault (and never seen): raft resends.
			t.failed(p, batch, err)
			continue
		}
		if conn == nil {
			if conn, err = t.dial(p, peerMagic); err == nil {
				p.mu.Lock()
				p.raft = conn
				p.mu.Unlock()
				select {
				case <-p.stopc: // stop may have looked before p.raft was set
					return
				default:
				}
			}
		}
		if err == nil {
			_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout(len(buf))))
			_, err = conn.Write(buf)
		}
		if cap(buf) > 4<<20 {
			buf = nil // do not keep a snapshot's buffer
		}
		if err != nil {
			closeConn()
			t.failed(p, batch, err)
			select {
			case <-p.stopc:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
	}
}

// mergeAppend folds m into last when both are appends of one term and m
// continues where last ends: the result is the append raft would have sent
// had both sets of entries been proposed at once, with m's (later) commit
// index. A leader proposes entries as they come, a few at a time, and sends
// an append per proposal; the follower answers each and each answer moves
// the commit index and sends more. Merged, a frame carries one append and
// gets one answer. owned says whether last's entries are a slice of the
// caller's, which may grow in place, rather than raft's; so does the
// second result, for the merged message.
func mergeAppend(last, m *raftpb.Message, owned bool) (ok, nowOwned bool) {
	if last.Type != raftpb.MsgApp || m.Type != raftpb.MsgApp || last.Term != m.Term || len(last.Entries) == 0 {
		return false, owned
	}
	tail := last.Entries[len(last.Entries)-1]
	if m.Index != tail.Index || m.LogTerm != tail.Term || m.Commit < last.Commit {
		return false, owned
	}
	if len(m.Entries) > 0 {
		if !owned {
			// A new slice: the entries belong to raft's log.
			last.Entries = append(make([]raftpb.Entry, 0, 2*(len(last.Entries)+len(m.Entries))), last.Entries...)
			owned = true
		}
		last.Entries = append(last.Entries, m.Entries...)
	}
	last.Commit = m.Commit
	return true, owned
}

func (t *tcpTransport) failed(p *peer, batch []raftpb.Message, err error) {
	t.logger.Debug("peer unreachable", "peer", fmt.Sprintf("%x", p.id), "err", err)
	t.local.ReportUnreachable(p.id)
}

// Forward implements Transport over the peer gRPC service.
func (t *tcpTransport) Forward(ctx context.Context, lead, reqID uint64, command []byte) (*statev1.Result, uint64, error) {
	p, ok := t.peer(lead)
	if !ok || p.client == nil {
		return nil, 0, errRetry
	}
	resp, err := p.client.Forward(ctx, &peerv1.ForwardRequest{RequestId: reqID, Payload: command, ClusterId: t.clusterID})
	if err == nil {
		res := &statev1.Result{}
		if err := proto.Unmarshal(resp.GetResult(), res); err != nil {
			return nil, 0, fmt.Errorf("%w: undecodable result from the leader: %v", errRetry, err)
		}
		return res, resp.GetIndex(), nil
	}
	if ctx.Err() != nil {
		return nil, 0, ErrTimeout
	}
	if st := status.Convert(err); st.Code() == codes.ResourceExhausted && st.Message() == "overloaded" {
		return nil, 0, ErrOverloaded
	} else if st.Code() == codes.InvalidArgument && st.Message() == "refused" {
		return nil, 0, ErrRefused
	}
	// Whatever went wrong on the way (the leader stopped, lost leadership,
	// or the connection broke), a retry with the same request id is safe.
	return nil, 0, fmt.Errorf("%w: forward to %x: %v", errRetry, lead, err)
}

// ForwardConfChange implements Transport over the peer gRPC service.
func (t *tcpTransport) ForwardConfChange(ctx context.Context, lead uint64, cc []byte) (uint64, error) {
	p, ok := t.peer(lead)
	if !ok || p.client == nil {
		return 0, errRetry
	}
	resp, err := p.client.ChangeMembership(ctx, &peerv1.ChangeMembershipRequest{ClusterId: t.clusterID, ConfChange: cc})
	if err == nil {
		return resp.GetIndex(), nil
	}
	if ctx.Err() != nil {
		return 0, ErrTimeout
	}
	st := status.Convert(err)
	if st.Code() == codes.AlreadyExists && strings.HasPrefix(st.Message(), ErrMembership.Error()) {
		return 0, fmt.Errorf("%w%s", errDone, strings.TrimPrefix(st.Message(), ErrMembership.Error()))
	}
	if st.Code() == codes.FailedPrecondition && strings.HasPrefix(st.Message(), ErrMembership.Error()) {
		return 0, fmt.Errorf("%w%s", ErrMembership, strings.TrimPrefix(st.Message(), ErrMembership.Error()))
	}
	return 0, fmt.Errorf("%w: forward to %x: %v", errRetry, lead, err)
}

// PeerServer returns the peer gRPC service of this node, to be registered on
// the server listening on this node's peer address. It serves only when the
// node runs on the TCP transport (the default); otherwise every call fails.
func (n *Node) PeerServer() peerv1.PeerServiceServer { return peerService{t: n.tcp} }

type peerService struct {
	peerv1.UnimplementedPeerServiceServer
	t *tcpTransport // nil: not the node's transport
}

// checkSender refuses a peer of another cluster, or one that is not a
// member.
func (t *tcpTransport) checkSender(clusterID, from uint64) error {
	if clusterID != t.clusterID {
		t.logger.Warn("refused a peer of another cluster (check --initial-cluster and --cluster-token)",
			"cluster_id", fmt.Sprintf("%x", clusterID), "from", fmt.Sprintf("%x", from))
		return status.Error(codes.FailedPrecondition, "cluster id mismatch")
	}
	if _, ok := t.peer(from); !ok {
		t.logger.Warn("refused a peer that is not a member", "from", fmt.Sprintf("%x", from))
		return status.Error(codes.FailedPrecondition, "not a member")
	}
	return nil
}

// ChangeMembership proposes a follower's conf change if this node leads.
func (s peerService) ChangeMembership(ctx context.Context, req *peerv1.ChangeMembershipRequest) (*peerv1.ChangeMembershipResponse, error) {
	t := s.t
	if t == nil || t.local == nil {
		return nil, status.Error(codes.Unavailable, "not serving")
	}
	if req.GetClusterId() != t.clusterID {
		return nil, status.Error(codes.FailedPrecondition, "cluster id mismatch")
	}
	if err := t.callerIsMember(ctx); err != nil {
		t.logger.Warn("refused a membership change from a caller that is no member", "err", err)
		return nil, status.Error(codes.PermissionDenied, "not a member")
	}
	index, err := t.local.ProposeConfChangeForwarded(ctx, req.GetConfChange())
	switch {
	case err == nil:
		t.releaseAll()
		return &peerv1.ChangeMembershipResponse{Index: index}, nil
	case errors.Is(err, errDone):
		return nil, status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, ErrMembership):
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, errNotLeader), errors.Is(err, errRetry):
		return nil, status.Error(codes.Unavailable, "leadership changed")
	case errors.Is(err, ErrStopped), errors.Is(err, ErrRemoved):
		return nil, status.Error(codes.Unavailable, "leader stopped")
	default:
		return nil, status.Error(codes.DeadlineExceeded, "no quorum")
	}
}

// Hello tells a starting node whether this one belongs to a cluster. It
// answers nodes of any cluster: that is what a starting node needs to know.
func (s peerService) Hello(_ context.Context, req *peerv1.HelloRequest) (*peerv1.HelloResponse, error) {
	t := s.t
	if t == nil || t.local == nil {
		return nil, status.Error(codes.Unavailable, "not serving")
	}
	h := t.local.Hello(req.GetFrom())
	return &peerv1.HelloResponse{ClusterId: t.clusterID, AppliedIndex: h.Applied, Members: uint32(h.Members), Member: h.Member, Started: h.Started,
		MaxClusterVersion: h.MaxClusterVersion, ClusterVersion: h.ClusterVersion}, nil
}

// Hello implements Transport over the peer gRPC service.
func (t *tcpTransport) Hello(ctx context.Context, to uint64) (HelloInfo, error) {
	p, ok := t.peer(to)
	if !ok || p.client == nil {
		return HelloInfo{}, fmt.Errorf("raftnode: %x is no peer", to)
	}
	resp, err := p.client.Hello(ctx, &peerv1.HelloRequest{ClusterId: t.clusterID, From: t.self})
	if err != nil {
		return HelloInfo{}, err
	}
	if resp.GetClusterId() != t.clusterID {
		return HelloInfo{}, fmt.Errorf("raftnode: %x belongs to cluster %x", to, resp.GetClusterId())
	}
	// A binary from before cluster versions says nothing of them: it
	// supports and applied version 1.
	return HelloInfo{
		Applied: resp.GetAppliedIndex(), Members: int(resp.GetMembers()), Member: resp.GetMember(), Started: resp.GetStarted(),
		MaxClusterVersion: entry.EffectiveVersion(resp.GetMaxClusterVersion()), ClusterVersion: entry.EffectiveVersion(resp.GetClusterVersion()),
	}, nil
}

// Forward proposes a follower's command if this node leads.
func (s peerService) Forward(ctx context.Context, req *peerv1.ForwardRequest) (*peerv1.ForwardResponse, error) {
	t := s.t
	if t == nil || t.local == nil {
		return nil, status.Error(codes.Unavailable, "not serving")
	}
	if req.GetClusterId() != t.clusterID {
		t.logger.Warn("refused a forwarded proposal of another cluster", "cluster_id", fmt.Sprintf("%x", req.GetClusterId()))
		return nil, status.Error(codes.FailedPrecondition, "cluster id mismatch")
	}
	if req.GetRequestId() == 0 {
		return nil, status.Error(codes.InvalidArgument, "request id required")
	}
	if err := t.callerIsMember(ctx); err != nil {
		t.logger.Warn("refused a forwarded proposal from a caller that is no member", "err", err)
		return nil, status.Error(codes.PermissionDenied, "not a member")
	}
	res, index, err := t.local.ProposeForwarded(ctx, req.GetRequestId(), req.GetPayload())
	switch {
	case err == nil:
		// The forwarding node learns of the commit before it hears the
		// answer (as it did before commit-only appends were held): a STALE
		// read there right after sees the write that went through it.
		t.releaseAll()
		b, err := proto.Marshal(res)
		if err != nil {
			return nil, status.Error(codes.Internal, "unencodable result")
		}
		return &peerv1.ForwardResponse{Result: b, Index: index}, nil
	case errors.Is(err, errNotLeader):
		return nil, status.Error(codes.FailedPrecondition, "not leader")
	case errors.Is(err, errRetry):
		return nil, status.Error(codes.Unavailable, "leadership changed")
	case errors.Is(err, ErrStopped):
		return nil, status.Error(codes.Unavailable, "leader stopped")
	case errors.Is(err, ErrOverloaded):
		// The forwarding node fails its caller at once too (Forward).
		return nil, status.Error(codes.ResourceExhausted, "overloaded")
	case errors.Is(err, ErrRefused):
		return nil, status.Error(codes.InvalidArgument, "refused")
	default:
		return nil, status.Error(codes.DeadlineExceeded, "no quorum")
	}
}

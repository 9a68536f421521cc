package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	peerv1 "github.com/keystore-dev/keystore/proto/keystore/peer/v1"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// MaxMessageBytes is the largest peer message: a snapshot travels in one.
// The peer gRPC server must accept messages this large.
const MaxMessageBytes = 512 << 20

const (
	// peerQueue is how many messages wait for one peer before new ones are
	// dropped (raft retransmits what matters).
	peerQueue = 4096
	// maxBatchBytes bounds one StreamRequest (snapshots excepted).
	maxBatchBytes = 4 << 20
)

// transport carries Raft messages to peers: one long-lived client stream per
// peer, fed by a queue; whatever queued while a batch was sent goes out in
// the next batch.
type transport struct {
	self   uint64
	node   *Node
	logger *slog.Logger
	peers  map[uint64]*peer
	wg     sync.WaitGroup
	stopc  chan struct{}
}

type peer struct {
	id     uint64
	addr   string
	conn   *grpc.ClientConn
	client peerv1.PeerServiceClient
	queue  chan raftpb.Message
}

func newTransport(self uint64, addrs map[uint64]string, n *Node, logger *slog.Logger) *transport {
	t := &transport{self: self, node: n, logger: logger, peers: make(map[uint64]*peer), stopc: make(chan struct{})}
	for id, addr := range addrs {
		if id == self {
			continue
		}
		t.peers[id] = &peer{id: id, addr: addr, queue: make(chan raftpb.Message, peerQueue)}
	}
	return t
}

func (t *transport) start() {
	for _, p := range t.peers {
		conn, err := grpc.NewClient(p.addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			// Fixed windows turn off gRPC's bandwidth-delay probe (a PING
			// and its ACK for nearly every message); see DESIGN.md.
			grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20),
			grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(MaxMessageBytes), grpc.MaxCallRecvMsgSize(MaxMessageBytes)),
		)
		if err != nil {
			// NewClient fails only on a malformed target, which Validate
			// would have caught; keep the peer unreachable.
			t.logger.Error("bad peer address", "peer", fmt.Sprintf("%x", p.id), "addr", p.addr, "err", err)
			continue
		}
		p.conn, p.client = conn, peerv1.NewPeerServiceClient(conn)
		t.wg.Add(1)
		go t.sendLoop(p)
	}
}

func (t *transport) stop() {
	close(t.stopc)
	t.wg.Wait()
	for _, p := range t.peers {
		if p.conn != nil {
			_ = p.conn.Close()
		}
	}
}

// send queues messages for their peers without blocking the Ready loop.
func (t *transport) send(msgs []raftpb.Message) {
	for _, m := range msgs {
		p, ok := t.peers[m.To]
		if !ok {
			continue
		}
		select {
		case p.queue <- m:
		default:
			t.node.rn.ReportUnreachable(m.To)
			if m.Type == raftpb.MsgSnap {
				t.node.rn.ReportSnapshot(m.To, raft.SnapshotFailure)
			}
		}
	}
}

// sendLoop owns p's stream: it batches queued messages into StreamRequests
// and reopens the stream (with backoff) when it breaks.
func (t *transport) sendLoop(p *peer) {
	defer t.wg.Done()
	var (
		ps      peerStream
		backoff = 50 * time.Millisecond
		batch   []raftpb.Message // reused: encodeBatch copies the messages
	)
	defer ps.close()
	for {
		var first raftpb.Message
		select {
		case <-t.stopc:
			return
		case first = <-p.queue:
		}
		clear(batch) // let go of the last batch's entries
		batch = append(batch[:0], first)
		size := first.Size()
	drain:
		for size < maxBatchBytes {
			select {
			case m := <-p.queue:
				batch = append(batch, m)
				size += m.Size()
			default:
				break drain
			}
		}
		wb, err := encodeBatch(t.self, t.node.cfg.ClusterID, batch)
		if err != nil {
			// Not the stream's fault (and never seen): raft resends.
			t.failed(p, batch, err)
			continue
		}
		err = ps.send(p.client, wb)
		if err != nil {
			ps.close()
			t.failed(p, batch, err)
			select {
			case <-t.stopc:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		for i := range batch {
			if batch[i].Type == raftpb.MsgSnap {
				t.node.rn.ReportSnapshot(p.id, raft.SnapshotFinish)
			}
		}
	}
}

// peerStream is the open stream to one peer, if any.
type peerStream struct {
	s      grpc.ClientStreamingClient[peerv1.StreamRequest, peerv1.StreamResponse]
	cancel context.CancelFunc
}

func (ps *peerStream) send(c peerv1.PeerServiceClient, wb *wireBatch) error {
	if ps.s == nil {
		ctx, cancel := context.WithCancel(context.Background())
		s, err := c.Stream(ctx, grpc.ForceCodecV2(peerCodec{}))
		if err != nil {
			cancel()
			return err
		}
		ps.s, ps.cancel = s, cancel
	}
	return ps.s.SendMsg(wb)
}

func (ps *peerStream) close() {
	if ps.cancel != nil {
		ps.cancel()
	}
	ps.s, ps.cancel = nil, nil
}

func (t *transport) failed(p *peer, batch []raftpb.Message, err error) {
	t.logger.Debug("peer unreachable", "peer", fmt.Sprintf("%x", p.id), "err", err)
	t.node.rn.ReportUnreachable(p.id)
	for i := range batch {
		if batch[i].Type == raftpb.MsgSnap {
			t.node.rn.ReportSnapshot(p.id, raft.SnapshotFailure)
		}
	}
}

// forward sends a proposal to the leader and waits for its result. Transport
// failures and a leader that is no longer leader ask for a retry.
func (t *transport) forward(ctx context.Context, lead, reqID uint64, command []byte) (*statev1.Result, error) {
	p, ok := t.peers[lead]
	if !ok || p.client == nil {
		return nil, errRetry
	}
	resp, err := p.client.Forward(ctx, &peerv1.ForwardRequest{RequestId: reqID, Payload: command, ClusterId: t.node.cfg.ClusterID})
	if err == nil {
		res := &statev1.Result{}
		if err := proto.Unmarshal(resp.GetResult(), res); err != nil {
			return nil, fmt.Errorf("raftnode: undecodable result from the leader: %w", err)
		}
		return res, nil
	}
	if ctx.Err() != nil {
		return nil, ErrTimeout
	}
	// Whatever went wrong on the way (the leader stopped, lost leadership,
	// or the connection broke), a retry with the same request id is safe.
	return nil, fmt.Errorf("%w: forward to %x: %v", errRetry, lead, err)
}

// PeerServer returns the peer gRPC service of this node, to be registered on
// the server listening on this node's peer address.
func (n *Node) PeerServer() peerv1.PeerServiceServer { return peerService{n: n} }

type peerService struct {
	peerv1.UnimplementedPeerServiceServer
	n *Node
}

// Stream steps every received message into raft.
func (s peerService) Stream(stream grpc.ClientStreamingServer[peerv1.StreamRequest, peerv1.StreamResponse]) error {
	ctx := stream.Context()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&peerv1.StreamResponse{})
		}
		if err != nil {
			return err
		}
		if err := s.checkSender(req.GetClusterId(), req.GetFrom()); err != nil {
			return err
		}
		for _, b := range req.GetMessages() {
			var m raftpb.Message
			if err := m.Unmarshal(b); err != nil {
				return status.Error(codes.InvalidArgument, "undecodable raft message")
			}
			if m.To != s.n.cfg.ID || m.From != req.GetFrom() {
				return status.Error(codes.FailedPrecondition, "message for another node")
			}
			if err := s.n.rn.Step(ctx, m); err != nil {
				return status.Error(codes.Unavailable, "node stopped")
			}
		}
	}
}

// checkSender refuses a peer of another cluster, or one that is not a
// member.
func (s peerService) checkSender(clusterID, from uint64) error {
	if clusterID != s.n.cfg.ClusterID {
		s.n.logger.Warn("refused a peer of another cluster (check --initial-cluster and --cluster-token)",
			"cluster_id", fmt.Sprintf("%x", clusterID), "from", fmt.Sprintf("%x", from))
		return status.Error(codes.FailedPrecondition, "cluster id mismatch")
	}
	if _, ok := s.n.cfg.Peers[from]; !ok || from == s.n.cfg.ID {
		s.n.logger.Warn("refused a peer that is not a member", "from", fmt.Sprintf("%x", from))
		return status.Error(codes.FailedPrecondition, "not a member")
	}
	return nil
}

// Forward proposes a follower's command if this node leads.
func (s peerService) Forward(ctx context.Context, req *peerv1.ForwardRequest) (*peerv1.ForwardResponse, error) {
	if req.GetClusterId() != s.n.cfg.ClusterID {
		s.n.logger.Warn("refused a forwarded proposal of another cluster", "cluster_id", fmt.Sprintf("%x", req.GetClusterId()))
		return nil, status.Error(codes.FailedPrecondition, "cluster id mismatch")
	}
	if s.n.lead.Load() != s.n.cfg.ID {
		return nil, status.Error(codes.FailedPrecondition, "not leader")
	}
	if req.GetRequestId() == 0 {
		return nil, status.Error(codes.InvalidArgument, "request id required")
	}
	res, err := s.n.proposeLocal(ctx, req.GetRequestId(), req.GetPayload())
	switch {
	case err == nil:
		b, err := proto.Marshal(res)
		if err != nil {
			return nil, status.Error(codes.Internal, "unencodable result")
		}
		return &peerv1.ForwardResponse{Result: b}, nil
	case errors.Is(err, errRetry):
		return nil, status.Error(codes.Unavailable, "leadership changed")
	case errors.Is(err, ErrStopped):
		return nil, status.Error(codes.Unavailable, "leader stopped")
	default:
		return nil, status.Error(codes.DeadlineExceeded, "no quorum")
	}
}

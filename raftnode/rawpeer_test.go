package raftnode

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	peerv1 "github.com/keystore-dev/keystore/proto/keystore/peer/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// recordingCore is a raftCore that records what the transport hands it.
type recordingCore struct {
	mu          sync.Mutex
	stepped     []raftpb.Message
	unreachable int
	snapReports []raft.SnapshotStatus
}

func (r *recordingCore) Propose(...[]byte) error { return raft.ErrProposalDropped }
func (r *recordingCore) StepFrame(msgs []raftpb.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stepped = append(r.stepped, msgs...)
	return nil
}
func (r *recordingCore) ReadIndex(context.Context, []byte) error { return nil }
func (r *recordingCore) ReportUnreachable(uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unreachable++
}
func (r *recordingCore) ReportSnapshot(_ uint64, st raft.SnapshotStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snapReports = append(r.snapReports, st)
}
func (r *recordingCore) ApplyConfChange(raftpb.ConfChangeI) *raftpb.ConfState { return nil }
func (r *recordingCore) Status() raft.Status                                  { return raft.Status{} }
func (r *recordingCore) Pump()                                                {}

func (r *recordingCore) messages() []raftpb.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]raftpb.Message(nil), r.stepped...)
}

// testNode is a Node with only what the transport uses, speaking for id
// in a cluster of peers (id -> address).
func testNode(t *testing.T, id uint64, peers map[uint64]string) (*Node, *recordingCore) {
	t.Helper()
	rc := &recordingCore{}
	n := &Node{cfg: Config{ID: id, ClusterID: 77, Peers: peers}, logger: slog.New(slog.DiscardHandler), rn: rc}
	n.tcp = newTCPTransport(id, 77, peers, 2*time.Millisecond, n.logger)
	n.tcp.local = nodeLocal{n} // inbound traffic; Start also starts the senders
	n.trans = n.tcp
	return n, rc
}

// serveSplit serves n's raft connections and a peer gRPC server on lis.
func serveSplit(t *testing.T, n *Node, lis net.Listener) {
	t.Helper()
	srv := grpc.NewServer()
	peerv1.RegisterPeerServiceServer(srv, n.PeerServer())
	go func() { _ = srv.Serve(n.SplitPeerListener(lis)) }()
	t.Cleanup(srv.Stop)
}

// pairOverTCP starts node 1's transport, sending to node 2, which serves
// raft and the peer gRPC service on a loopback port (addr); both stop when
// the test ends.
func pairOverTCP(t *testing.T) (a *Node, arc *recordingCore, b *Node, brc *recordingCore, addr string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peers := map[uint64]string{1: "127.0.0.1:1", 2: lis.Addr().String()}
	a, arc = testNode(t, 1, peers)
	b, brc = testNode(t, 2, peers)
	serveSplit(t, b, lis)
	_ = a.tcp.Start(nodeLocal{a})
	t.Cleanup(b.tcp.Stop)
	t.Cleanup(a.tcp.Stop)
	return a, arc, b, brc, lis.Addr().String()
}

func waitMessages(t *testing.T, rc *recordingCore, n int) []raftpb.Message {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := rc.messages()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d messages; want %d", len(got), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRawPeerDeliversInOrder: messages sent to a peer arrive in order and
// intact, a large one among them, while the same port still serves the
// peer gRPC service.
func TestRawPeerDeliversInOrder(t *testing.T) {
	a, _, _, brc, addr := pairOverTCP(t)

	big := bytes.Repeat([]byte("x"), 3<<20)
	var sent []raftpb.Message
	for i := uint64(1); i <= 500; i++ {
		m := raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2, Term: 3, Index: i,
			Entries: []raftpb.Entry{{Term: 3, Index: i + 1, Data: []byte{byte(i)}}}}
		if i == 250 {
			m.Entries[0].Data = big
		}
		sent = append(sent, m)
		a.tcp.Send([]raftpb.Message{m})
	}
	got := waitMessages(t, brc, len(sent))
	if len(got) != len(sent) {
		t.Fatalf("received %d messages; want %d", len(got), len(sent))
	}
	for i := range sent {
		w, _ := sent[i].Marshal()
		g, _ := got[i].Marshal()
		if !bytes.Equal(w, g) {
			t.Fatalf("message %d differs: got index %d (%d bytes), want index %d (%d bytes)", i, got[i].Index, len(g), sent[i].Index, len(w))
		}
	}

	// gRPC on the same port: a Forward of another cluster is refused by
	// the peer service itself.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = peerv1.NewPeerServiceClient(conn).Forward(ctx, &peerv1.ForwardRequest{ClusterId: 1})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Forward through the split port: %v; want FAILED_PRECONDITION from the peer service", err)
	}
}

// TestRawPeerReconnects: when the connection breaks, the sender reports the
// peer unreachable, dials again, and later messages arrive.
func TestRawPeerReconnects(t *testing.T) {
	a, arc, b, brc, _ := pairOverTCP(t)

	hb := func(term uint64) raftpb.Message {
		return raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: term}
	}
	a.tcp.Send([]raftpb.Message{hb(1)})
	waitMessages(t, brc, 1)
	// Break it from the receiving side.
	b.tcp.mu.Lock()
	for c := range b.tcp.inbound {
		_ = c.Close()
	}
	b.tcp.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for term := uint64(2); ; term++ {
		a.tcp.Send([]raftpb.Message{hb(term)})
		got := brc.messages()
		if len(got) > 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no message arrived after the connection broke")
		}
		time.Sleep(20 * time.Millisecond)
	}
	arc.mu.Lock()
	unreachable := arc.unreachable
	arc.mu.Unlock()
	if unreachable == 0 {
		t.Error("the sender never reported the peer unreachable after its connection broke")
	}
}

// TestRawPeerStopUnblocksWrite: a peer that accepts but never reads fills
// the socket buffers; stopping the transport still returns at once.
func TestRawPeerStopUnblocksWrite(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // never read
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			_ = c.Close()
		}
		mu.Unlock()
	}()
	a, _ := testNode(t, 1, map[uint64]string{1: "127.0.0.1:1", 2: lis.Addr().String()})
	_ = a.tcp.Start(nodeLocal{a})
	chunk := bytes.Repeat([]byte("y"), 1<<20)
	for i := uint64(1); i <= 64; i++ {
		a.tcp.Send([]raftpb.Message{{Type: raftpb.MsgApp, From: 1, To: 2, Index: i, Entries: []raftpb.Entry{{Index: i + 1, Data: chunk}}}})
	}
	time.Sleep(300 * time.Millisecond) // let the writer fill the buffers and block
	start := time.Now()
	a.tcp.Stop()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("stop took %v with a write blocked; want it at once", took)
	}
}

// TestStepFrameRefusesForgedSender: a frame whose message names another
// sender (or addressee) than its connection is refused, and nothing of it
// reaches raft.
func TestStepFrameRefusesForgedSender(t *testing.T) {
	n, rc := testNode(t, 2, map[uint64]string{1: "a", 2: "b", 3: "c"})
	ok := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1}
	forged := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 3, To: 2, Term: 9}
	misaddressed := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 3, Term: 9}
	// A snapshot's data comes on a connection of its own and is staged
	// before raft hears of it; one in a frame would name data never staged.
	inlineSnap := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: 2, Term: 1, Snapshot: &raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 9, Term: 1}}}
	for _, bad := range []raftpb.Message{forged, misaddressed, inlineSnap} {
		frame, err := PeerFrame(ok, bad, ok)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.tcp.stepFrame(frame[4:], 1, nil); err == nil {
			t.Errorf("frame with %v: accepted; want refused", bad)
		}
	}
	// A cut message is refused too.
	frame, _ := PeerFrame(ok)
	if _, err := n.tcp.stepFrame(frame[4:len(frame)-1], 1, nil); err == nil {
		t.Error("cut frame accepted; want refused")
	}
	if got := rc.messages(); len(got) != 0 {
		t.Errorf("raft got %d messages; want none", len(got))
	}
	// And a good frame is stepped whole.
	frame, _ = PeerFrame(ok, ok)
	if _, err := n.tcp.stepFrame(frame[4:], 1, nil); err != nil {
		t.Fatal(err)
	}
	if got := rc.messages(); len(got) != 2 {
		t.Errorf("raft got %d messages; want 2", len(got))
	}
}

// TestRawPeerSlowReaderKeepsFramesWhole: while the receiver reads nothing,
// the socket fills and the sender's writes wait; once it reads, every
// message arrives whole and in order.
func TestRawPeerSlowReaderKeepsFramesWhole(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	peers := map[uint64]string{1: "127.0.0.1:1", 2: lis.Addr().String()}
	a, _ := testNode(t, 1, peers)
	b, brc := testNode(t, 2, peers)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				head := make([]byte, preambleLen)
				if _, err := io.ReadFull(c, head); err != nil {
					_ = c.Close()
					return
				}
				time.Sleep(500 * time.Millisecond) // read nothing for a while
				b.tcp.serveRaft(c, head)
			}()
		}
	}()
	_ = a.tcp.Start(nodeLocal{a})
	defer a.tcp.Stop()
	defer b.tcp.Stop()

	a.tcp.Send([]raftpb.Message{{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1}}) // dials
	body := bytes.Repeat([]byte("z"), 64<<10)
	sent := []raftpb.Message{{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1}}
	deadline := time.Now().Add(5 * time.Second)
	for i := uint64(1); i <= 400; i++ {
		m := raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2, Term: 1, Index: i,
			Entries: []raftpb.Entry{{Term: 1, Index: i + 1, Data: append([]byte{byte(i), byte(i >> 8)}, body...)}}}
		sent = append(sent, m)
		a.tcp.Send([]raftpb.Message{m})
		if i == 1 {
			for { // let the connection open
				a.tcp.peers[2].mu.Lock()
				open := a.tcp.peers[2].raft != nil
				a.tcp.peers[2].mu.Unlock()
				if open || time.Now().After(deadline) {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	got := waitMessages(t, brc, len(sent))
	for i := range sent {
		w, _ := sent[i].Marshal()
		g, _ := got[i].Marshal()
		if !bytes.Equal(w, g) {
			t.Fatalf("message %d differs: got index %d, want %d", i, got[i].Index, sent[i].Index)
		}
	}
}

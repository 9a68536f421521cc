package server_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/testcluster"
	peerv1 "github.com/keystore-dev/keystore/proto/keystore/peer/v1"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// lifecycle claims and completes key through node, returning the response.
func lifecycle(t *testing.T, c keystorev1.KeyStoreServiceClient, key string) *keystorev1.Response {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	cl, err := c.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: key, Fingerprint: []byte("fp-" + key)})
	if err != nil {
		t.Fatalf("claim %s: %v", key, err)
	}
	if cl.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
		t.Fatalf("claim %s: got outcome %v; want ACQUIRED", key, cl.Outcome)
	}
	resp := &keystorev1.Response{Code: 201, Metadata: map[string]string{"k": key}, Body: []byte("body of " + key)}
	if _, err := c.Complete(ctx, &keystorev1.CompleteRequest{Namespace: "test", Key: key, Token: cl.Token, Response: resp}); err != nil {
		t.Fatalf("complete %s: %v", key, err)
	}
	return resp
}

// otherNode returns the first node of c that is not name.
func otherNode(c *testcluster.Cluster, name string) string {
	for _, n := range c.Names {
		if n != name {
			return n
		}
	}
	return ""
}

func TestClusterConcurrentClaimsOneWinner(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	const callers = 200
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		acquired []uint64
		inProg   int
		errs     []error
	)
	start := make(chan struct{})
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			cl := c.Client(c.Names[i%3])
			resp, err := cl.Claim(ctxT(t, 15*time.Second), &keystorev1.ClaimRequest{
				Namespace: "test", Key: "contended", Owner: fmt.Sprintf("caller-%d", i),
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case resp.Outcome == keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED:
				acquired = append(acquired, resp.Token)
			case resp.Outcome == keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS:
				inProg++
			}
		}(i)
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d claims failed, first: %v", len(errs), errs[0])
	}
	if len(acquired) != 1 {
		t.Fatalf("got %d ACQUIRED (tokens %v); want exactly 1", len(acquired), acquired)
	}
	if inProg != callers-1 {
		t.Fatalf("got %d IN_PROGRESS; want %d", inProg, callers-1)
	}
}

func TestClusterCompletedSurviveCrashOfAllNodes(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Crashable: true})
	want := map[string]*keystorev1.Response{}
	for i := 0; i < 30; i++ {
		key := fmt.Sprintf("k%d", i)
		want[key] = lifecycle(t, c.Client(c.Names[i%3]), key)
	}
	for _, n := range c.Names {
		c.CrashNode(n)
	}
	for _, n := range c.Names {
		c.StartNode(n)
	}
	c.WaitServing(15 * time.Second)
	for key, resp := range want {
		for _, n := range c.Names {
			got, err := c.Client(n).Claim(ctxT(t, 10*time.Second), &keystorev1.ClaimRequest{Namespace: "test", Key: key})
			if err != nil {
				t.Fatalf("claim %s on %s after restart: %v", key, n, err)
			}
			if got.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED {
				t.Fatalf("claim %s on %s after restart: got %v; want COMPLETED", key, n, got.Outcome)
			}
			if !proto.Equal(got.Record.Response, resp) {
				t.Fatalf("replay of %s on %s: got %v; want %v", key, n, got.Record.Response, resp)
			}
		}
	}
}

func TestClusterLeaderLossNewLeaderServesWithin3s(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	lifecycle(t, c.Client("n1"), "before")
	old := c.Leader()
	if old == "" {
		t.Fatal("no leader")
	}
	c.StopNode(old)
	stopped := time.Now()
	survivor := otherNode(c, old)
	var served time.Duration
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Client(survivor).Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: fmt.Sprintf("after-%d", i)})
		cancel()
		if err == nil {
			served = time.Since(stopped)
			break
		}
		if time.Since(stopped) > 10*time.Second {
			t.Fatalf("no successful claim 10s after the leader stopped: %v", err)
		}
	}
	t.Logf("first successful claim %s after the leader stopped", served)
	if served > 3*time.Second {
		t.Fatalf("got first claim after %s; want within 3s", served)
	}
	// The old leader comes back and catches up.
	c.StartNode(old)
	c.WaitServing(10 * time.Second)
	if _, err := c.Client(old).Get(ctxT(t, 5*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: "before"}); err != nil {
		t.Fatalf("get on the restarted old leader: %v", err)
	}
}

func TestClusterFollowerCatchesUpBySnapshot(t *testing.T) {
	// Compact often so that 10,000 writes leave the stopped follower behind
	// the log's start: one entry each (unpacked), whatever the speed of the
	// machine (packed, 64 writers made as few as 1,100 entries on a loaded
	// one, not enough to compact past the follower).
	c := testcluster.Start(t, testcluster.Options{Raft: raftnode.Config{SnapshotEntries: 1000, KeepEntries: 200, MaxPackProposals: 1}})
	lead := c.Leader()
	var follower string
	for _, n := range c.Names {
		if n != lead {
			follower = n
			break
		}
	}
	c.StopNode(follower)
	const writes = 10_000
	const workers = 64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cl := c.Client(lead)
			for i := w; i < writes; i += workers {
				if _, err := cl.Claim(ctxT(t, 10*time.Second), &keystorev1.ClaimRequest{Namespace: "test", Key: fmt.Sprintf("w%d", i)}); err != nil {
					errc <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	c.StartNode(follower)
	c.WaitApplied(follower, c.Server(lead).Status().Applied, 30*time.Second)
	if got := c.Server(follower).Status().SnapshotsApplied; got == 0 {
		t.Fatalf("follower caught up without a snapshot; want at least one")
	}
	// Same data: a stale read on the follower sees the last write, and the
	// state machines are identical once every node applied the same index.
	if _, err := c.Client(follower).Get(ctxT(t, 5*time.Second), &keystorev1.GetRequest{
		Namespace: "test", Key: fmt.Sprintf("w%d", writes-1), Consistency: keystorev1.Consistency_CONSISTENCY_STALE,
	}); err != nil {
		t.Fatalf("stale get on the caught-up follower: %v", err)
	}
	// The follower's state came from the snapshot: claims of keys it
	// received that way must find them there too (its record key filter
	// was built before the snapshot replaced its state), or its replica
	// would grant them and part from the others. Sent to the follower,
	// the claims are forwarded and go through the log (the leader would
	// answer a retry of a key it just saw by a read).
	for i := 0; i < writes; i += writes / 50 {
		res, err := c.Client(follower).Claim(ctxT(t, 10*time.Second), &keystorev1.ClaimRequest{Namespace: "test", Key: fmt.Sprintf("w%d", i)})
		if err != nil {
			t.Fatalf("claim again: %v", err)
		}
		if res.GetOutcome() == keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
			t.Fatalf("claim again of w%d acquired it; want it in progress", i)
		}
	}
	c.AssertSameState()
}

func TestClusterGetAfterCompleteOnAnotherNode(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	for i := 0; i < 20; i++ {
		key := fmt.Sprintf("g%d", i)
		writer, reader := c.Names[i%3], c.Names[(i+1)%3]
		resp := lifecycle(t, c.Client(writer), key)
		got, err := c.Client(reader).Get(ctxT(t, 5*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: key})
		if err != nil {
			t.Fatalf("get %s on %s after complete on %s: %v", key, reader, writer, err)
		}
		if got.Record.State != keystorev1.RecordState_RECORD_STATE_COMPLETED || !proto.Equal(got.Record.Response, resp) {
			t.Fatalf("get %s on %s: got %v; want COMPLETED with %v", key, reader, got.Record, resp)
		}
	}
}

func TestClusterClaimWaitWakesOnCompleteFromAnotherNode(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	ctx := ctxT(t, 10*time.Second)
	held, err := c.Client("n1").Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: "w"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *keystorev1.ClaimResponse, 1)
	go func() {
		resp, err := c.Client("n2").Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: "w", Wait: durationpb.New(8 * time.Second)})
		if err != nil {
			t.Errorf("waiting claim: %v", err)
		}
		done <- resp
	}()
	time.Sleep(300 * time.Millisecond)
	began := time.Now()
	if _, err := c.Client("n3").Complete(ctx, &keystorev1.CompleteRequest{Namespace: "test", Key: "w", Token: held.Token, Response: &keystorev1.Response{Code: 200}}); err != nil {
		t.Fatal(err)
	}
	resp := <-done
	if resp == nil || resp.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED {
		t.Fatalf("waiting claim: got %v; want COMPLETED", resp)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("waiting claim answered %s after the complete; want promptly", d)
	}
}

// TestClusterStaleReadSeesWriteThroughSameNode: a write made through a
// follower (forwarded to the leader) is applied on that follower before it
// answers, so a STALE read there right after sees it — although the leader
// holds back commit-only appends (raftnode's commit hold).
func TestClusterStaleReadSeesWriteThroughSameNode(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	follower := otherNode(c, c.Leader())
	kv := c.Client(follower)
	for i := 0; i < 20; i++ {
		key := fmt.Sprintf("rw%d", i)
		resp := lifecycle(t, kv, key)
		got, err := kv.Get(ctxT(t, 5*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: key, Consistency: keystorev1.Consistency_CONSISTENCY_STALE})
		if err != nil || got.GetRecord().GetState() != keystorev1.RecordState_RECORD_STATE_COMPLETED || got.GetRecord().GetResponse().GetCode() != resp.Code {
			t.Fatalf("%s: STALE read on %s right after completing through it: %v, %v; want COMPLETED with code %d", key, follower, got, err, resp.Code)
		}
	}
}

func TestClusterNoQuorumIsUnavailable(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	lifecycle(t, c.Client("n1"), "k")
	c.StopNode("n2")
	c.StopNode("n3")
	// Each call has its own deadline: a Claim answered just before its
	// deadline must not leave the Get too little time to answer.
	ctx := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	_, err := c.Client("n1").Claim(ctx(), &keystorev1.ClaimRequest{Namespace: "test", Key: "lonely"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("claim without quorum: got %v; want UNAVAILABLE", err)
	}
	_, err = c.Client("n1").Get(ctx(), &keystorev1.GetRequest{Namespace: "test", Key: "k"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("linearizable get without quorum: got %v; want UNAVAILABLE", err)
	}
	got, err := c.Client("n1").Get(ctx(), &keystorev1.GetRequest{Namespace: "test", Key: "k", Consistency: keystorev1.Consistency_CONSISTENCY_STALE})
	if err != nil || got.Record.State != keystorev1.RecordState_RECORD_STATE_COMPLETED {
		t.Fatalf("stale get without quorum: got %v, %v; want the COMPLETED record", got, err)
	}
}

// A retry of a completed or in-progress key on the leader is answered by a
// linearizable read, not a log write, and answers exactly what the log
// would: COMPLETED with the stored response, IN_PROGRESS under a live
// lease, FAILED_PRECONDITION on another fingerprint; once the lease ends,
// a Claim goes through the log again and takes over.
func TestClusterRetryOnLeaderNeedsNoLogWrite(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	lead := c.Leader()
	kv := c.Client(lead)
	resp := lifecycle(t, kv, "done")
	ctx := ctxT(t, 20*time.Second)
	held, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: "held", Lease: durationpb.New(2 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}

	before := c.Server(lead).Status().Commit
	const retries = 50
	for i := 0; i < retries; i++ {
		got, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: "done", Fingerprint: []byte("fp-done")})
		if err != nil || got.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED || !proto.Equal(got.Record.Response, resp) || got.Token != 0 {
			t.Fatalf("retry of a completed key: got %v, %v; want COMPLETED with the stored response", got, err)
		}
		got, err = kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: "held"})
		if err != nil || got.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS || got.Record.Attempt != 1 {
			t.Fatalf("retry of a held key: got %v, %v; want IN_PROGRESS", got, err)
		}
	}
	if _, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: "done", Fingerprint: []byte("other")}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("retry with another fingerprint: got %v; want FAILED_PRECONDITION", err)
	}
	// Idle ticks (one a second) are the only entries allowed meanwhile.
	if grew := c.Server(lead).Status().Commit - before; grew > 5 {
		t.Fatalf("%d retries grew the log by %d entries; want reads only", 2*retries, grew)
	}

	// The lease ends: the next Claim must take over through the log.
	time.Sleep(2200 * time.Millisecond)
	got, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: "held"})
	if err != nil || got.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || got.Record.Attempt != 2 || got.Token == held.Token {
		t.Fatalf("claim after the lease ended: got %v, %v; want ACQUIRED, attempt 2, a new token", got, err)
	}
}

// A node refuses peer traffic of another cluster (another token or other
// member names) and of non-members: a node started with the wrong
// addresses cannot vote in, or propose to, a stranger.
func TestClusterRefusesStrangers(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	lead := c.Leader()
	conn, err := grpc.NewClient(c.PeerEndpoint(lead), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	peer := peerv1.NewPeerServiceClient(conn)
	ours := raftnode.ClusterIDFor("keystore", c.Names)
	stranger := raftnode.ClusterIDFor("other", c.Names)
	if ours == stranger || ours == raftnode.ClusterIDFor("keystore", []string{"n1", "n2", "x"}) {
		t.Fatal("cluster ids of different clusters are equal")
	}

	// A proposal forwarded from another cluster is refused; ours is not.
	cmd := mustMarshalCommand(t, "stranger")
	_, err = peer.Forward(ctxT(t, 5*time.Second), &peerv1.ForwardRequest{RequestId: 1, Payload: cmd, ClusterId: stranger})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Forward from another cluster: got %v; want FAILED_PRECONDITION", err)
	}
	if _, err := peer.Forward(ctxT(t, 5*time.Second), &peerv1.ForwardRequest{RequestId: 2, Payload: cmd, ClusterId: ours}); err != nil {
		t.Fatalf("Forward from our cluster: %v", err)
	}

	// The forged Forward of the security report: a Claim no client
	// request could make (a bad namespace, a 4 KiB key, a lease of ~150
	// years) is refused by the leader and stores nothing.
	forged, err := proto.Marshal(&statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
		Namespace: "NOT VALID NS!", Key: strings.Repeat("k", 4096), Lease: int64(150 * 365 * 24 * time.Hour), Retention: int64(time.Hour)}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = peer.Forward(ctxT(t, 5*time.Second), &peerv1.ForwardRequest{RequestId: 3, Payload: forged, ClusterId: ours})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("forged Forward: got %v; want INVALID_ARGUMENT", err)
	}
	if _, _, err := c.Server(lead).Store().Get("NOT VALID NS!", strings.Repeat("k", 4096)); err == nil {
		t.Fatal("the forged Claim was stored")
	}

	// A heartbeat with a higher term, from another cluster, from a
	// non-member, for another node, or claiming another sender than its
	// connection's, is refused before raft sees it (raft would follow it):
	// the connection is closed, the term and the leader stay.
	term := c.Server(lead).Status().Term
	leadID, follower := raftnode.IDFromName(lead), raftnode.IDFromName(c.Follower())
	heartbeat := func(from uint64) raftpb.Message {
		return raftpb.Message{Type: raftpb.MsgHeartbeat, To: leadID, From: from, Term: term + 100}
	}
	for _, tc := range []struct {
		name                string
		clusterID, from, to uint64
		msg                 raftpb.Message
	}{
		{"another cluster", stranger, follower, leadID, heartbeat(follower)},
		{"a non-member", ours, raftnode.IDFromName("n9"), leadID, heartbeat(raftnode.IDFromName("n9"))},
		{"another addressee", ours, follower, follower, heartbeat(follower)},
		{"a forged sender", ours, follower, leadID, heartbeat(raftnode.IDFromName("n9"))},
	} {
		if !sendRaw(t, c.PeerEndpoint(lead), tc.clusterID, tc.from, tc.to, tc.msg) {
			t.Errorf("%s: the connection stayed open; want it closed", tc.name)
		}
	}
	if got := c.Server(lead).Status(); got.Term != term || got.Leader != leadID {
		t.Fatalf("after refused heartbeats: term %d leader %x; want term %d, leader unchanged", got.Term, got.Leader, term)
	}

	// The control: the same heartbeat from a member, rightly addressed,
	// reaches raft, and the leader follows the higher term.
	sendRaw(t, c.PeerEndpoint(lead), ours, follower, leadID, heartbeat(follower))
	deadline := time.Now().Add(5 * time.Second)
	for c.Server(lead).Status().Term <= term {
		if time.Now().After(deadline) {
			t.Fatal("a member's heartbeat with a higher term did not reach raft: the test proves nothing")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sendRaw opens a raft connection to addr with the given preamble, sends m,
// and reports whether the node closed the connection within a second.
func sendRaw(t *testing.T, addr string, clusterID, from, to uint64, m raftpb.Message) (closed bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	frame, err := raftnode.PeerFrame(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(append(raftnode.PeerPreamble(clusterID, from, to), frame...)); err != nil {
		return true
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	var b [1]byte
	_, err = conn.Read(b[:])
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

func mustMarshalCommand(t *testing.T, key string) []byte {
	t.Helper()
	b, err := proto.Marshal(&statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
		Namespace: "test", Key: key, Lease: int64(time.Minute), Retention: int64(time.Hour)}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

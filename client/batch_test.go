package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	batchMethod  = "/keystore.v1.BatchService/Batch"
	streamMethod = "/keystore.v1.BatchService/Stream"
)

// rpcCounter counts the unary calls a client makes, by method, the
// operations its Batch calls carry, and the messages and operations it
// sends on streams; with refuseStream (refuseBatch) it answers Stream
// (Batch) itself with UNIMPLEMENTED, as a server without them would.
type rpcCounter struct {
	mu           sync.Mutex
	calls        map[string]int
	batchedOps   int
	streamMsgs   int
	streamedOps  int
	refuseBatch  bool
	refuseStream bool
	// refuseStreamLate: Stream opens, and its first Recv fails with
	// UNIMPLEMENTED, as gRPC reports a method the server lacks.
	refuseStreamLate bool
	// slowFirstSend holds each stream's first message this long, so that
	// writes issued meanwhile queue behind it.
	slowFirstSend time.Duration
}

func (r *rpcCounter) interceptStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	r.mu.Lock()
	if r.calls == nil {
		r.calls = make(map[string]int)
	}
	r.calls[method]++
	refuse := r.refuseStream && method == streamMethod
	r.mu.Unlock()
	if refuse {
		return nil, status.Error(codes.Unimplemented, "unknown method Stream for service keystore.v1.BatchService")
	}
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	if r.refuseStreamLate && method == streamMethod {
		return lateRefusal{cs}, nil
	}
	first := true
	return sendCounter{cs, func(n int) {
		r.mu.Lock()
		r.streamMsgs++
		r.streamedOps += n
		slow := first && method == streamMethod
		first = false
		r.mu.Unlock()
		if slow {
			time.Sleep(r.slowFirstSend)
		}
	}}, nil
}

// lateRefusal is a stream the server turns out not to serve.
type lateRefusal struct{ grpc.ClientStream }

func (lateRefusal) SendMsg(any) error { return nil }
func (lateRefusal) RecvMsg(any) error {
	return status.Error(codes.Unimplemented, "unknown method Stream for service keystore.v1.BatchService")
}

// sendCounter reports the operations of every StreamRequest sent.
type sendCounter struct {
	grpc.ClientStream
	sent func(ops int)
}

func (s sendCounter) SendMsg(m any) error {
	if req, ok := m.(*keystorev1.StreamRequest); ok {
		s.sent(len(req.GetOperations()))
	}
	return s.ClientStream.SendMsg(m)
}

func (r *rpcCounter) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	r.mu.Lock()
	if r.calls == nil {
		r.calls = make(map[string]int)
	}
	r.calls[method]++
	if b, ok := req.(*keystorev1.BatchRequest); ok {
		r.batchedOps += len(b.GetOperations())
	}
	refuse := r.refuseBatch && method == batchMethod
	r.mu.Unlock()
	if refuse {
		return status.Error(codes.Unimplemented, "unknown service keystore.v1.BatchService")
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (r *rpcCounter) get(method string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[method]
}

// lifecycles runs n concurrent callers through a whole lifecycle each: a
// Complete with a wrong token (ErrClaimLost), Claim, Complete, and a retried
// Claim that must replay the response.
func lifecycles(t *testing.T, c *client.Client, prefix string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := ctxT(t, 30*time.Second)
			key := fmt.Sprintf("%s-%d", prefix, i)
			_, err := c.Complete(ctx, client.CompleteRequest{Namespace: "pay", Key: key, Token: 42})
			if !errors.Is(err, client.ErrClaimLost) {
				errs <- fmt.Errorf("%s: Complete before Claim: %v; want ErrClaimLost", key, err)
				return
			}
			res, err := c.Claim(ctx, client.ClaimRequest{Namespace: "pay", Key: key, Fingerprint: []byte("fp")})
			if err != nil || res.Outcome != client.Acquired {
				errs <- fmt.Errorf("%s: Claim: %+v, %v; want Acquired", key, res, err)
				return
			}
			body := []byte("receipt " + key)
			if _, err := c.Complete(ctx, client.CompleteRequest{Namespace: "pay", Key: key, Token: res.Token, Response: client.Response{Code: 200, Body: body}}); err != nil {
				errs <- fmt.Errorf("%s: Complete: %v", key, err)
				return
			}
			again, err := c.Claim(ctx, client.ClaimRequest{Namespace: "pay", Key: key, Fingerprint: []byte("fp")})
			if err != nil || again.Outcome != client.Completed || string(again.Record.Response.Body) != string(body) {
				errs <- fmt.Errorf("%s: retried Claim: %+v, %v; want Completed with %q", key, again, err, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func countingClient(t *testing.T, tc *testcluster.Cluster, maxInflight int, rc *rpcCounter) *client.Client {
	t.Helper()
	c, err := client.New(context.Background(), client.Config{
		Endpoints:   tc.Endpoints(),
		MaxInflight: maxInflight,
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(rc.intercept),
			grpc.WithChainStreamInterceptor(rc.interceptStream),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestConcurrentWritesShareStreamMessages: concurrent writes to a node
// travel over one stream, those issued while a message is being sent
// together in the next, each still getting its own answer and error.
func TestConcurrentWritesShareStreamMessages(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	rc := &rpcCounter{slowFirstSend: 100 * time.Millisecond}
	c := countingClient(t, tc, 0, rc)
	const callers = 64
	lifecycles(t, c, "order", callers)
	rc.mu.Lock()
	msgs, ops := rc.streamMsgs, rc.streamedOps
	rc.mu.Unlock()
	writes := 3 * callers // a retried Claim of a completed key is a read
	if ops < writes || msgs == 0 || msgs >= ops {
		t.Fatalf("%d stream messages carried %d writes; want all %d writes, several to a message", msgs, ops, writes)
	}
	if n := rc.get(batchMethod) + rc.get("/keystore.v1.KeyStoreService/Claim") + rc.get("/keystore.v1.KeyStoreService/Complete"); n != 0 {
		t.Errorf("%d unary write calls beside the stream; want 0", n)
	}
	t.Logf("%d writes in %d stream messages", ops, msgs)
}

// TestConcurrentWritesShareBatches: against a node without Stream, with one
// call slot per node, concurrent writes travel together in Batch calls, each
// still getting its own answer and error.
func TestConcurrentWritesShareBatches(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	rc := &rpcCounter{refuseStream: true}
	c := countingClient(t, tc, 1, rc)
	const callers = 64
	lifecycles(t, c, "order", callers)
	batches := rc.get(batchMethod)
	rc.mu.Lock()
	batched := rc.batchedOps
	rc.mu.Unlock()
	writes := 4 * callers
	if batches == 0 || batched <= batches {
		t.Fatalf("%d Batch calls carried %d writes; want batches of several writes", batches, batched)
	}
	t.Logf("%d writes: %d in %d Batch calls", writes, batched, batches)
}

// TestBatchingOff: a negative MaxInflight sends every write as its own RPC.
func TestBatchingOff(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	rc := &rpcCounter{}
	c := countingClient(t, tc, -1, rc)
	lifecycles(t, c, "order", 32)
	rc.mu.Lock()
	streamed := rc.streamMsgs
	rc.mu.Unlock()
	if n := rc.get(batchMethod); n != 0 || streamed != 0 {
		t.Errorf("%d Batch calls and %d stream messages with batching off; want 0", n, streamed)
	}
}

// TestBatchUnimplementedFallsBack: against a server without BatchService
// the client learns so from the refused stream and the first refused batch
// and sends writes one by one, and no write fails for it.
func TestBatchUnimplementedFallsBack(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	rc := &rpcCounter{refuseBatch: true, refuseStream: true}
	const maxInflight = 2
	c := countingClient(t, tc, maxInflight, rc)
	lifecycles(t, c, "first", 64)
	lifecycles(t, c, "second", 64) // after the fallback, no more Batch calls
	// Each node's batcher may have had every slot's batch refused before
	// it learnt; no more than that.
	if n := rc.get(batchMethod); n == 0 || n > maxInflight*len(tc.Names) {
		t.Errorf("%d Batch calls; want 1-%d before the client stops trying", n, maxInflight*len(tc.Names))
	}
}

// TestStreamRefusedLateFallsBack: when the server reports UNIMPLEMENTED on
// the stream itself (what an older server does), the writes sent on it go
// out again through Batch, none fails for it, and later writes do not try
// the stream again.
func TestStreamRefusedLateFallsBack(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	rc := &rpcCounter{refuseStreamLate: true}
	c := countingClient(t, tc, 0, rc)
	lifecycles(t, c, "first", 32)
	opened := rc.get(streamMethod)
	lifecycles(t, c, "second", 32)
	if n := rc.get(batchMethod); n == 0 {
		t.Error("no Batch calls after the stream was refused")
	}
	if n := rc.get(streamMethod); n != opened {
		t.Errorf("%d streams opened after the client learnt the node lacks Stream; want none", n-opened)
	}
}

// TestQueuedWriteRetriesElsewhere: against nodes without Stream, a write
// queued behind a stuck node, whose attempt times out before its batch goes
// out, is retried on the next node like a plain RPC that timed out, and
// succeeds there.
func TestQueuedWriteRetriesElsewhere(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	stuck := tc.Endpoints()[0]
	hang := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if cc.Target() == stuck {
			<-ctx.Done()
			return status.FromContextError(ctx.Err()).Err()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	c, err := client.New(context.Background(), client.Config{
		Endpoints:      tc.Endpoints(), // the stuck node first
		LeaderRefresh:  -1,
		MaxInflight:    1,
		AttemptTimeout: 300 * time.Millisecond,
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(hang),
			grpc.WithChainStreamInterceptor((&rpcCounter{refuseStream: true}).interceptStream),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ { // one takes the slot, the others queue
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Claim(ctxT(t, 10*time.Second), client.ClaimRequest{Namespace: "pay", Key: fmt.Sprintf("k%d", i)})
			if err != nil || res.Outcome != client.Acquired {
				t.Errorf("Claim k%d: %+v, %v; want Acquired on another node", i, res, err)
			}
		}()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
}

// TestWritesIssuedTogetherShareAMessage: writes whose callers wake at the
// same moment (as callers answered by one server message do, each then
// issuing its next write) travel in a few stream messages, not one each,
// even though sending one takes the stream next to no time.
func TestWritesIssuedTogetherShareAMessage(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	rc := &rpcCounter{}
	c := countingClient(t, tc, 0, rc)
	ctx := ctxT(t, 30*time.Second)
	if _, err := c.Claim(ctx, client.ClaimRequest{Namespace: "pay", Key: "warm", Fingerprint: []byte("fp")}); err != nil {
		t.Fatal(err) // the stream is open from here on
	}
	const callers = 64
	for round := range 3 {
		rc.mu.Lock()
		msgs0, ops0 := rc.streamMsgs, rc.streamedOps
		rc.mu.Unlock()
		gate := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for i := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				key := fmt.Sprintf("together-%d-%d", round, i)
				if res, err := c.Claim(ctx, client.ClaimRequest{Namespace: "pay", Key: key, Fingerprint: []byte("fp")}); err != nil || res.Outcome != client.Acquired {
					errs <- fmt.Errorf("%s: Claim: %+v, %v; want Acquired", key, res, err)
				}
			}()
		}
		time.Sleep(10 * time.Millisecond) // every caller waits at the gate
		close(gate)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		rc.mu.Lock()
		msgs, ops := rc.streamMsgs-msgs0, rc.streamedOps-ops0
		rc.mu.Unlock()
		if ops != callers || msgs > callers/4 {
			t.Fatalf("round %d: %d stream messages carried %d writes; want all %d writes in at most %d messages", round, msgs, ops, callers, callers/4)
		}
		t.Logf("round %d: %d writes in %d stream messages", round, ops, msgs)
	}
}

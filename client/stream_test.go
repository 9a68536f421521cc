package client_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/internal/testcluster"
	"google.golang.org/grpc"
)

// TestStreamBreakRetriesElsewhere: when the node a client streams to stops
// with writes in flight, those writes fail with the stream and are retried
// on the other nodes like calls that failed in transit: every lifecycle
// still completes, and every write that was acknowledged stays done.
func TestStreamBreakRetriesElsewhere(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	lead := tc.Leader()
	eps := []string{tc.Endpoint(lead)} // the leader first: its stream breaks
	for _, n := range tc.Names {
		if n != lead {
			eps = append(eps, tc.Endpoint(n))
		}
	}
	rc := &rpcCounter{}
	c, err := client.New(context.Background(), client.Config{
		Endpoints:     eps,
		LeaderRefresh: -1,
		DialOptions:   []grpc.DialOption{grpc.WithChainStreamInterceptor(rc.interceptStream)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	stop := make(chan struct{})
	var done atomic.Int64
	var acked sync.Map // keys whose Complete was acknowledged
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx := ctxT(t, 30*time.Second)
				key := fmt.Sprintf("w%d-%d", w, i)
				res, err := c.Claim(ctx, client.ClaimRequest{Namespace: "pay", Key: key, Fingerprint: []byte("fp")})
				if err != nil || res.Outcome != client.Acquired {
					t.Errorf("%s: Claim: %+v, %v; want Acquired", key, res, err)
					return
				}
				if _, err := c.Complete(ctx, client.CompleteRequest{Namespace: "pay", Key: key, Token: res.Token, Response: client.Response{Code: 200}}); err != nil {
					t.Errorf("%s: Complete: %v", key, err)
					return
				}
				acked.Store(key, true)
				done.Add(1)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	before := done.Load()
	tc.StopNode(lead)
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	after := done.Load()
	if before == 0 || after <= before {
		t.Fatalf("%d lifecycles before the stop, %d after; want progress on both sides", before, after)
	}
	rc.mu.Lock()
	msgs := rc.streamMsgs
	rc.mu.Unlock()
	if msgs == 0 {
		t.Fatal("no write went over a stream")
	}
	acked.Range(func(k, _ any) bool {
		rec, err := c.Get(ctxT(t, 10*time.Second), "pay", k.(string))
		if err != nil || rec.State != client.StateCompleted {
			t.Errorf("%s: acknowledged Complete, now %+v, %v; want COMPLETED", k, rec, err)
		}
		return true
	})
	t.Logf("%d lifecycles before the leader stopped, %d in all; %d stream messages", before, after, msgs)
}

// TestStopDoesNotWaitForStreams: a node with a client's stream open stops
// without waiting out its grace period for the stream to end (the stream
// is drained), and the client carries on with the other nodes.
func TestStopDoesNotWaitForStreams(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	lead := tc.Leader()
	c, err := client.New(context.Background(), client.Config{Endpoints: tc.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	claim := func(key string) {
		t.Helper()
		res, err := c.Claim(ctxT(t, 20*time.Second), client.ClaimRequest{Namespace: "pay", Key: key})
		if err != nil || res.Outcome != client.Acquired {
			t.Fatalf("Claim %s: %+v, %v; want Acquired", key, res, err)
		}
	}
	claim("before") // opens the client's stream to the leader
	start := time.Now()
	tc.StopNode(lead) // grace: 1s
	if took := time.Since(start); took > 700*time.Millisecond {
		t.Errorf("stopping a node with an open stream took %v; want it not to wait out the 1s grace", took)
	}
	claim("after")
}

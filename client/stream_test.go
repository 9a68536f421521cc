package client_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/cluster-test/faultproxy"
	"github.com/keystore-dev/keystore/internal/testcluster"
	"google.golang.org/grpc"
)

// leaderBehindProxy starts a cluster and returns a fault proxy in front of
// its leader, and the endpoints a client is given: the proxy first, then
// the other nodes.
func leaderBehindProxy(t *testing.T) (*faultproxy.Proxy, []string) {
	t.Helper()
	tc := testcluster.Start(t, testcluster.Options{})
	lead := tc.Leader()
	px, err := faultproxy.New("127.0.0.1:0", tc.Endpoint(lead))
	if err != nil {
		t.Fatal(err)
	}
	px.Start()
	t.Cleanup(px.Close)
	eps := []string{px.Addr()}
	for _, n := range tc.Names {
		if n != lead {
			eps = append(eps, tc.Endpoint(n))
		}
	}
	return px, eps
}

// TestStreamBreakRetries: when the connection a client streams over breaks
// with writes in flight and unanswered (blackholed, then reset), those
// writes fail with the stream at once and are retried like calls that
// failed in transit: every worker completes a lifecycle again within a few
// seconds (not after the 20 s attempt timeout a write left waiting on a
// dead stream would take), and every write that was acknowledged stays done.
func TestStreamBreakRetries(t *testing.T) {
	px, eps := leaderBehindProxy(t)
	rc := &rpcCounter{}
	c, err := client.New(context.Background(), client.Config{
		Endpoints:      eps,
		LeaderRefresh:  -1,
		AttemptTimeout: 20 * time.Second,
		DialOptions:    []grpc.DialOption{grpc.WithChainStreamInterceptor(rc.interceptStream)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	const workers = 16
	stop := make(chan struct{})
	var done [workers]atomic.Int64
	var acked sync.Map // keys whose Complete was acknowledged
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx := ctxT(t, 60*time.Second)
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
				done[w].Add(1)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	px.Drop() // writes sent from now on get no answer
	time.Sleep(200 * time.Millisecond)
	var atBreak [workers]int64
	for w := range done {
		atBreak[w] = done[w].Load()
	}
	px.Reset()
	broke := time.Now()
	lagging := func() (n int) {
		for w := range done {
			if done[w].Load() == atBreak[w] {
				n++
			}
		}
		return n
	}
	for lagging() > 0 && time.Since(broke) < 8*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	resumed, stuck := time.Since(broke), lagging()
	close(stop)
	wg.Wait()
	if stuck > 0 {
		t.Fatalf("%d of %d workers completed nothing within %v of the break; want writes on the broken stream failed at once and retried", stuck, workers, resumed.Round(time.Millisecond))
	}
	rc.mu.Lock()
	msgs := rc.streamMsgs
	rc.mu.Unlock()
	var total int64
	for w := range done {
		total += done[w].Load()
	}
	acked.Range(func(k, _ any) bool {
		rec, err := c.Get(ctxT(t, 10*time.Second), "pay", k.(string))
		if err != nil || rec.State != client.StateCompleted {
			t.Errorf("%s: acknowledged Complete, now %+v, %v; want COMPLETED", k, rec, err)
		}
		return true
	})
	t.Logf("%d lifecycles; every worker went on %v after the break; %d stream messages", total, resumed.Round(time.Millisecond), msgs)
}

// TestQuietStreamWriteRetriesElsewhere: a write on a stream whose node
// went quiet (a blackhole: no answer, no reset) ends when its attempt
// times out, not at the caller's deadline, and is retried on the next node
// like a plain RPC that timed out.
func TestQuietStreamWriteRetriesElsewhere(t *testing.T) {
	px, eps := leaderBehindProxy(t)
	const attempt = 500 * time.Millisecond
	c, err := client.New(context.Background(), client.Config{Endpoints: eps, LeaderRefresh: -1, AttemptTimeout: attempt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// The stream opens through the proxy.
	if res, err := c.Claim(ctxT(t, 10*time.Second), client.ClaimRequest{Namespace: "pay", Key: "k0"}); err != nil || res.Outcome != client.Acquired {
		t.Fatalf("Claim k0: %+v, %v; want Acquired", res, err)
	}
	px.Drop()
	start := time.Now()
	res, err := c.Claim(ctxT(t, 20*time.Second), client.ClaimRequest{Namespace: "pay", Key: "k1"})
	took := time.Since(start)
	if err != nil || res.Outcome != client.Acquired {
		t.Fatalf("Claim k1 with the first node quiet: %+v, %v; want Acquired on another node", res, err)
	}
	if took < attempt || took > attempt+3*time.Second {
		t.Fatalf("Claim k1 took %v; want the attempt timeout (%v) and a retry elsewhere", took, attempt)
	}
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

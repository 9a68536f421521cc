package client_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
)

func newClient(t *testing.T, endpoints ...string) *client.Client {
	t.Helper()
	c, err := client.New(context.Background(), client.Config{Endpoints: endpoints})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestDoRunsOnceAcrossConcurrentCallers(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	var runs atomic.Int32
	fn := func(ctx context.Context) (client.Response, error) {
		runs.Add(1)
		time.Sleep(200 * time.Millisecond)
		return client.Response{Code: 201, Body: []byte("charged once")}, nil
	}
	var wg sync.WaitGroup
	var replays atomic.Int32
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Each caller has its own client, pinned first to a different node.
			eps := tc.Endpoints()
			c := newClient(t, eps[i%3], eps[(i+1)%3], eps[(i+2)%3])
			res, err := c.Do(ctxT(t, 20*time.Second), "pay", "order-1", []byte("fp"), fn)
			if err != nil {
				errs <- err
				return
			}
			if res.Response.Code != 201 || string(res.Response.Body) != "charged once" {
				errs <- fmt.Errorf("got response %+v; want the stored one", res.Response)
			}
			if res.Replayed {
				replays.Add(1)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("fn ran %d times; want 1", n)
	}
	if n := replays.Load(); n != 19 {
		t.Fatalf("%d callers got a replay; want 19", n)
	}
}

func TestDoSurvivesLeaderKillMidway(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	lead := tc.Leader()
	// Put the leader first, so Do's claim goes through it.
	eps := []string{tc.Endpoint(lead)}
	for _, n := range tc.Names {
		if n != lead {
			eps = append(eps, tc.Endpoint(n))
		}
	}
	c := newClient(t, eps...)
	var runs atomic.Int32
	started := make(chan struct{})
	release := make(chan struct{})
	fn := func(ctx context.Context) (client.Response, error) {
		runs.Add(1)
		close(started)
		<-release
		return client.Response{Code: 200, Body: []byte("done")}, nil
	}
	type out struct {
		res *client.Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := c.Do(ctxT(t, 30*time.Second), "pay", "k", nil, fn, client.WithLease(3*time.Second))
		done <- out{res, err}
	}()
	<-started
	tc.StopNode(lead)
	close(release)
	o := <-done
	if o.err != nil {
		t.Fatalf("Do across a leader kill: %v", o.err)
	}
	if string(o.res.Response.Body) != "done" || o.res.Replayed {
		t.Fatalf("Do: got %+v; want the fresh response", o.res)
	}
	again, err := c.Do(ctxT(t, 10*time.Second), "pay", "k", nil, fn)
	if err != nil || !again.Replayed || string(again.Response.Body) != "done" {
		t.Fatalf("second Do: got %+v, %v; want a replay of %q", again, err, "done")
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("fn ran %d times; want 1", n)
	}
}

func TestDoLeaseLossCancelsFn(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	// The test plays a party that learnt the holder's token (no answer
	// shows a live claim's token to anyone but its holder, so it is read
	// off the holder's own Claim answer): every write is its own RPC, and
	// an interceptor keeps the ACQUIRED token.
	var held atomic.Uint64
	c, err := client.New(context.Background(), client.Config{Endpoints: tc.Endpoints(), MaxInflight: -1,
		DialOptions: []grpc.DialOption{grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if r, ok := reply.(*keystorev1.ClaimResponse); ok && err == nil && r.GetToken() != 0 {
				held.Store(r.GetToken())
			}
			return err
		})}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	raw := tc.Client("n2")
	fnErr := make(chan error, 1)
	_, err = c.Do(ctxT(t, 20*time.Second), "pay", "fenced", nil, func(ctx context.Context) (client.Response, error) {
		// Another party fences this holder: it releases the claim with
		// the holder's token and claims the key itself.
		if _, err := raw.Release(ctx, &keystorev1.ReleaseRequest{Namespace: "pay", Key: "fenced", Token: held.Load()}); err != nil {
			return client.Response{}, err
		}
		if _, err := raw.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "pay", Key: "fenced"}); err != nil {
			return client.Response{}, err
		}
		select {
		case <-ctx.Done():
			fnErr <- context.Cause(ctx)
			return client.Response{}, ctx.Err()
		case <-time.After(10 * time.Second):
			fnErr <- errors.New("fn was not cancelled")
			return client.Response{Code: 200}, nil
		}
	}, client.WithLease(600*time.Millisecond))
	if !errors.Is(err, client.ErrClaimLost) {
		t.Fatalf("Do after losing the claim: got %v; want ErrClaimLost", err)
	}
	if cause := <-fnErr; !errors.Is(cause, client.ErrClaimLost) {
		t.Fatalf("fn's context cause: got %v; want ErrClaimLost", cause)
	}
}

func TestDoRetryableErrorReleases(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	c := newClient(t, tc.Endpoints()...)
	var runs atomic.Int32
	transient := errors.New("card network timeout")
	fn := func(ctx context.Context) (client.Response, error) {
		if runs.Add(1) == 1 {
			return client.Response{}, client.Retryable(transient)
		}
		return client.Response{Code: 200, Body: []byte("ok")}, nil
	}
	if _, err := c.Do(ctxT(t, 10*time.Second), "pay", "r", nil, fn); !errors.Is(err, transient) {
		t.Fatalf("first Do: got %v; want the transient error", err)
	}
	res, err := c.Do(ctxT(t, 10*time.Second), "pay", "r", nil, fn)
	if err != nil || res.Replayed || string(res.Response.Body) != "ok" {
		t.Fatalf("second Do: got %+v, %v; want fn to run again and succeed", res, err)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("fn ran %d times; want 2", n)
	}
}

func TestDoDeterministicErrorIsReplayed(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	c := newClient(t, tc.Endpoints()...)
	var runs atomic.Int32
	declined := errors.New("card declined")
	fn := func(ctx context.Context) (client.Response, error) {
		runs.Add(1)
		return client.Response{Code: 402, Body: []byte(`{"error":"declined"}`)}, declined
	}
	res, err := c.Do(ctxT(t, 10*time.Second), "pay", "d", nil, fn)
	if !errors.Is(err, declined) || res == nil || res.Response.Code != 402 {
		t.Fatalf("first Do: got %+v, %v; want the 402 response and the error", res, err)
	}
	res, err = c.Do(ctxT(t, 10*time.Second), "pay", "d", nil, fn)
	if err != nil || !res.Replayed || res.Response.Code != 402 || string(res.Response.Body) != `{"error":"declined"}` {
		t.Fatalf("second Do: got %+v, %v; want the stored 402 replayed", res, err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("fn ran %d times; want 1", n)
	}
}

func TestDoFingerprintMismatchDoesNotRun(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	c := newClient(t, tc.Endpoints()...)
	ok := func(ctx context.Context) (client.Response, error) { return client.Response{Code: 200}, nil }
	if _, err := c.Do(ctxT(t, 10*time.Second), "pay", "f", client.Fingerprint("POST", "/charge", []byte(`{"amount":10}`)), ok); err != nil {
		t.Fatal(err)
	}
	ran := false
	_, err := c.Do(ctxT(t, 10*time.Second), "pay", "f", client.Fingerprint("POST", "/charge", []byte(`{"amount":99}`)),
		func(ctx context.Context) (client.Response, error) { ran = true; return client.Response{}, nil })
	if !errors.Is(err, client.ErrFingerprintMismatch) || ran {
		t.Fatalf("Do with another fingerprint: got %v (ran %v); want ErrFingerprintMismatch without running", err, ran)
	}
}

func TestDoInProgressAfterWait(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	c := newClient(t, tc.Endpoints()...)
	if _, err := c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: "pay", Key: "held", Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err := c.Do(ctxT(t, 10*time.Second), "pay", "held", nil,
		func(ctx context.Context) (client.Response, error) { return client.Response{}, nil }, client.WithWait(300*time.Millisecond))
	if !errors.Is(err, client.ErrInProgress) {
		t.Fatalf("Do on a held key: got %v; want ErrInProgress", err)
	}
	if d := time.Since(began); d < 250*time.Millisecond {
		t.Fatalf("Do gave up after %s; want it to wait ~300ms", d)
	}
}

func TestClientRoutesAroundDeadEndpoint(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	dead := testcluster.FreeAddr(t)
	c := newClient(t, append([]string{dead}, tc.Endpoints()...)...)
	res, err := c.Claim(ctxT(t, 10*time.Second), client.ClaimRequest{Namespace: "pay", Key: "route"})
	if err != nil || res.Outcome != client.Acquired {
		t.Fatalf("Claim with a dead first endpoint: got %+v, %v; want Acquired", res, err)
	}
	if _, err := c.Get(ctxT(t, 10*time.Second), "pay", "missing"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Get of a missing key: got %v; want ErrNotFound", err)
	}
	// Every node down but one still answers.
	tc.StopNode("n1")
	if _, err := c.Get(ctxT(t, 10*time.Second), "pay", "route"); err != nil {
		t.Fatalf("Get with n1 down: %v", err)
	}
}

// A Claim retried with the same request id after its answer was lost gets
// the same grant, not IN_PROGRESS.
func TestClaimRetryWithSameRequestIDIsAcquired(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	req := &keystorev1.ClaimRequest{Namespace: "pay", Key: "retry", RequestId: 0xfeedbeef}
	first, err := tc.Client("n1").Claim(ctxT(t, 5*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := tc.Client("n2").Claim(ctxT(t, 5*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	if again.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || again.Token != first.Token {
		t.Fatalf("retried claim: got %v token %d; want ACQUIRED token %d", again.Outcome, again.Token, first.Token)
	}
	other, err := tc.Client("n3").Claim(ctxT(t, 5*time.Second), &keystorev1.ClaimRequest{Namespace: "pay", Key: "retry", RequestId: 0xbad})
	if err != nil || other.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS {
		t.Fatalf("another caller's claim: got %v, %v; want IN_PROGRESS", other, err)
	}
}

// A caller that gives up while fn goes on must not let a retry take over:
// the heartbeats keep the claim until fn returns.
func TestDoClaimOutlivesCallerWhileFnRuns(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	c := newClient(t, tc.Endpoints()...)
	var runs atomic.Int32
	slow := func(ctx context.Context) (client.Response, error) {
		runs.Add(1)
		time.Sleep(2500 * time.Millisecond) // ignores its ctx, as real work may
		return client.Response{Code: 200, Body: []byte("slow")}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := c.Do(ctx, "pay", "outlive", nil, slow, client.WithLease(time.Second))
		first <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	time.Sleep(1400 * time.Millisecond) // past the 1s lease
	_, err := c.Do(ctxT(t, 5*time.Second), "pay", "outlive", nil, slow, client.WithWait(0))
	if !errors.Is(err, client.ErrInProgress) {
		t.Fatalf("retry while the first fn still runs: got %v; want ErrInProgress", err)
	}
	<-first
	if n := runs.Load(); n != 1 {
		t.Fatalf("fn ran %d times; want 1", n)
	}
}

func TestDoZeroLeaseMeansDefault(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	c := newClient(t, tc.Endpoints()...)
	res, err := c.Do(ctxT(t, 10*time.Second), "pay", "zero-lease", nil, func(ctx context.Context) (client.Response, error) {
		time.Sleep(100 * time.Millisecond)
		return client.Response{Code: 200}, ctx.Err()
	}, client.WithLease(0))
	if err != nil || res.Response.Code != 200 {
		t.Fatalf("Do with WithLease(0): got %+v, %v; want success under the default lease", res, err)
	}
}

// The client sends calls to the leader's endpoint first (a follower would
// forward writes, one more hop), keeps doing so under concurrent load, and
// follows the leader when it changes.
func TestClientFollowsLeader(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	var mu sync.Mutex
	calls := map[string]int{}
	record := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if strings.HasPrefix(method, "/keystore.v1.KeyStoreService/") {
			mu.Lock()
			calls[cc.Target()]++
			mu.Unlock()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	lead := tc.Leader()
	var eps []string // followers first
	for _, n := range tc.Names {
		if n != lead {
			eps = append(eps, tc.Endpoint(n))
		}
	}
	eps = append(eps, tc.Endpoint(lead))
	c, err := client.New(context.Background(), client.Config{
		Endpoints: eps, LeaderRefresh: 200 * time.Millisecond,
		DialOptions: []grpc.DialOption{
			grpc.WithUnaryInterceptor(record),
			grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				cs, err := streamer(ctx, desc, cc, method, opts...)
				if err != nil {
					return nil, err
				}
				return sendCounter{cs, func(ops int) {
					mu.Lock()
					calls[cc.Target()] += ops
					mu.Unlock()
				}}, nil
			}),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// load runs 8 concurrent claimers for d and returns where their calls
	// went.
	var seq atomic.Int64
	load := func(d time.Duration) map[string]int {
		t.Helper()
		mu.Lock()
		clear(calls)
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					key := fmt.Sprintf("k%d", seq.Add(1))
					if _, err := c.Claim(context.Background(), client.ClaimRequest{Namespace: "route", Key: key}); err != nil {
						t.Errorf("Claim: %v", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(calls)
	}
	// onlyTo wants the calls at the leader. A call that fails there (the
	// leader, starved of CPU on a loaded CI machine, stepped down for a
	// moment) rightly fails over to another node, so a few calls
	// elsewhere are allowed; a client that did not follow the leader
	// would send nearly all of them to the first endpoint, a follower.
	onlyTo := func(want string, got map[string]int) {
		t.Helper()
		total := 0
		for _, n := range got {
			total += n
		}
		if at := got[tc.Endpoint(want)]; total == 0 || at < total*98/100 {
			t.Fatalf("calls went to %v; want (nearly) all to the leader %s at %s", got, want, tc.Endpoint(want))
		}
	}
	load(time.Second) // the client learns the leader under load
	onlyTo(lead, load(time.Second))

	tc.StopNode(lead)
	deadline := time.Now().Add(5 * time.Second)
	for tc.Leader() == "" || tc.Leader() == lead {
		if time.Now().After(deadline) {
			t.Fatal("no new leader within 5s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	load(2 * time.Second)
	onlyTo(tc.Leader(), load(time.Second))
}

// TestDoAfterALongWaitHoldsItsClaim: a Do whose Claim waited longer than
// its lease (another holder kept the key meanwhile) holds a claim whose
// lease starts when it was granted, not when the Claim was sent: fn runs
// to its end and its response is stored. Counting from the send, Do used
// to give the claim up at once and return ErrClaimLost for a claim it
// held, leaving fn's side effect without a stored response (the next
// retry would run it again).
func TestDoAfterALongWaitHoldsItsClaim(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	c := newClient(t, tc.Endpoints()...)
	held, err := c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: "pay", Key: "waited", Lease: 2 * time.Second})
	if err != nil || held.Outcome != client.Acquired {
		t.Fatalf("first holder's claim: %v, %v", held, err)
	}
	go func() {
		time.Sleep(time.Second)
		_, _ = c.Heartbeat(context.Background(), "pay", "waited", held.Token, 2*time.Second)
		time.Sleep(2 * time.Second)
		_ = c.Release(context.Background(), "pay", "waited", held.Token)
	}()
	ran := false
	res, err := c.Do(ctxT(t, 20*time.Second), "pay", "waited", nil, func(ctx context.Context) (client.Response, error) {
		ran = true
		select {
		case <-ctx.Done():
			return client.Response{}, context.Cause(ctx)
		case <-time.After(1500 * time.Millisecond): // longer than the lease: heartbeats keep it
		}
		return client.Response{Code: 201, Body: []byte("charged once")}, nil
	}, client.WithLease(time.Second), client.WithWait(10*time.Second))
	if err != nil || !ran || res.Replayed {
		t.Fatalf("Do after waiting for the key: %v (ran %v, result %+v); want fn run to its end and stored", err, ran, res)
	}
	again, err := c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: "pay", Key: "waited"})
	if err != nil || again.Outcome != client.Completed || string(again.Record.Response.Body) != "charged once" {
		t.Fatalf("a retry after Do: %+v, %v; want the stored response replayed", again, err)
	}
}

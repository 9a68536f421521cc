package grpcidem_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/client/grpcidem"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	checkMethod  = "/grpc.health.v1.Health/Check"
	statusMethod = "/keystore.v1.ClusterService/Status"
)

// fakeService is the protected service. Health.Check behaves by the
// request's service name:
//   - "invalid": INVALID_ARGUMENT with a BadRequest detail;
//   - "flaky": UNAVAILABLE on its first run, SERVING after;
//   - "blocking": waits for unblock (or the call's end), then SERVING;
//   - "stubborn": waits for unblock even if the call ends, notes the
//     error of its ctx in ctxErr, then SERVING;
//   - anything else: SERVING.
//
// ClusterService.Status answers a StatusResponse whose Term counts its runs.
type fakeService struct {
	healthpb.UnimplementedHealthServer
	keystorev1.UnimplementedClusterServiceServer

	delay   time.Duration
	unblock chan struct{}
	started chan struct{} // receives once per run of "blocking" or "stubborn"
	ctxErr  chan error    // receives the ctx error of each "stubborn" run

	mu   sync.Mutex
	runs map[string]int
}

func newFakeService() *fakeService {
	return &fakeService{unblock: make(chan struct{}), started: make(chan struct{}, 16), ctxErr: make(chan error, 16), runs: map[string]int{}}
}

func (f *fakeService) run(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs[name]++
	return f.runs[name]
}

func (f *fakeService) Runs(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.runs[name]
}

func (f *fakeService) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	n := f.run(req.GetService())
	time.Sleep(f.delay)
	switch req.GetService() {
	case "invalid":
		st, err := status.New(codes.InvalidArgument, "service name is not allowed").WithDetails(&errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "service", Description: "must not be \"invalid\""}},
		})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	case "flaky":
		if n == 1 {
			return nil, status.Error(codes.Unavailable, "backend down")
		}
	case "blocking":
		f.started <- struct{}{}
		select {
		case <-f.unblock:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	case "stubborn":
		f.started <- struct{}{}
		<-f.unblock
		f.ctxErr <- ctx.Err()
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (f *fakeService) Status(ctx context.Context, req *keystorev1.StatusRequest) (*keystorev1.StatusResponse, error) {
	n := f.run("status")
	time.Sleep(f.delay)
	return &keystorev1.StatusResponse{
		Name:    "fake",
		Members: []*keystorev1.Member{{Name: "a", Id: "1", IsLeader: true}, {Name: "b", Id: "2"}},
		Leader:  "a",
		Term:    uint64(n),
		LogTime: timestamppb.New(time.Unix(1700000000, int64(n))),
		Serving: true,
	}, nil
}

// env is a protected gRPC server over bufconn and clients of it.
type env struct {
	svc     *fakeService
	health  healthpb.HealthClient
	cluster keystorev1.ClusterServiceClient
}

func serve(t *testing.T, kc *client.Client, svc *fakeService, opts ...grpcidem.Option) *env {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.UnaryInterceptor(grpcidem.UnaryServerInterceptor(kc, opts...)))
	healthpb.RegisterHealthServer(srv, svc)
	keystorev1.RegisterClusterServiceServer(srv, svc)
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
	})
	return &env{svc: svc, health: healthpb.NewHealthClient(conn), cluster: keystorev1.NewClusterServiceClient(conn)}
}

// withKey returns a context for one call carrying the idempotency key.
func withKey(t *testing.T, key string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	if key == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, grpcidem.DefaultMetadataKey, key)
}

func replayed(md metadata.MD) bool {
	v := md.Get(grpcidem.ReplayedHeader)
	return len(v) == 1 && v[0] == "true"
}

// TestUnaryServerInterceptor runs every scenario against one real cluster;
// each scenario has its own namespace, server and fake service.
func TestUnaryServerInterceptor(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	kc, err := client.New(context.Background(), client.Config{Endpoints: tc.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kc.Close() })

	for _, s := range []struct {
		name string
		test func(t *testing.T, kc *client.Client, ns string)
	}{
		{"ReplayReturnsIdenticalMessage", testReplay},
		{"ConcurrentCallsRunOnce", testConcurrent},
		{"InProgressWithoutWaitIsAborted", testInProgress},
		{"HandlerOutlivingCallKeepsClaim", testHandlerOutlivesCall},
		{"DeterministicErrorReplayed", testDeterministicError},
		{"TransientErrorReleases", testTransientError},
		{"KeyReusedForDifferentRequest", testKeyReused},
		{"KeylessCallsPassThrough", testKeyless},
		{"NonOptedMethodsPassThrough", testNotOpted},
		{"RequireKey", testRequireKey},
		{"InvalidKey", testInvalidKey},
		{"CustomMetadataKey", testCustomMetadataKey},
		{"ScopeByAuthorization", testScopeAuthorization},
		{"ScopeByClientCert", testScopeClientCert},
		{"AnonymousScopeIsShared", testAnonymousScope},
		{"RequireScope", testRequireScope},
		{"WithScopeOverrides", testWithScope},
		{"WithoutScopeSharesKeys", testWithoutScope},
		{"KeyLimitIsMaxKeyLen", testKeyLimit},
		{"WaitedLongHoldsItsClaim", func(t *testing.T, kc *client.Client, ns string) { testWaitedLong(t, tc, kc, ns) }},
	} {
		ns := "grpcidem-" + strings.ToLower(s.name)
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			s.test(t, kc, ns)
		})
	}
}

func testReplay(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod))
	var h1, h2 metadata.MD
	first, err := e.cluster.Status(withKey(t, "k"), &keystorev1.StatusRequest{}, grpc.Header(&h1))
	if err != nil {
		t.Fatalf("first call: %v", err)
	}
	again, err := e.cluster.Status(withKey(t, "k"), &keystorev1.StatusRequest{}, grpc.Header(&h2))
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if !proto.Equal(first, again) {
		t.Fatalf("retry got %v; want the first response %v", again, first)
	}
	if replayed(h1) || !replayed(h2) {
		t.Fatalf("%s header: first %v, retry %v; want absent, then true", grpcidem.ReplayedHeader, h1, h2)
	}
	if n := e.svc.Runs("status"); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
	// Another key is another operation.
	other, err := e.cluster.Status(withKey(t, "k2"), &keystorev1.StatusRequest{})
	if err != nil || other.GetTerm() != 2 {
		t.Fatalf("call with another key: got %v, %v; want a fresh run (term 2)", other, err)
	}
}

func testConcurrent(t *testing.T, kc *client.Client, ns string) {
	svc := newFakeService()
	svc.delay = 300 * time.Millisecond
	e := serve(t, kc, svc, grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod), grpcidem.WithWait(8*time.Second))
	const callers = 10
	var (
		wg      sync.WaitGroup
		replays atomic.Int32
		resps   [callers]*keystorev1.StatusResponse
		errs    [callers]error
	)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var h metadata.MD
			resps[i], errs[i] = e.cluster.Status(withKey(t, "same"), &keystorev1.StatusRequest{}, grpc.Header(&h))
			if replayed(h) {
				replays.Add(1)
			}
		}()
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if !proto.Equal(resps[i], resps[0]) {
			t.Fatalf("caller %d got %v; caller 0 got %v; want one response", i, resps[i], resps[0])
		}
	}
	if n := svc.Runs("status"); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
	if n := replays.Load(); n != callers-1 {
		t.Fatalf("%d callers got a replay; want %d", n, callers-1)
	}
}

func testInProgress(t *testing.T, kc *client.Client, ns string) {
	svc := newFakeService()
	e := serve(t, kc, svc, grpcidem.WithNamespace(ns), grpcidem.WithMethods(checkMethod))
	req := &healthpb.HealthCheckRequest{Service: "blocking"}
	done := make(chan error, 1)
	go func() {
		_, err := e.health.Check(withKey(t, "k"), req)
		done <- err
	}()
	<-svc.started
	_, err := e.health.Check(withKey(t, "k"), req)
	if st := status.Convert(err); st.Code() != codes.Aborted || !strings.Contains(st.Message(), "in progress") {
		t.Fatalf("call while another holds the key: got %v; want ABORTED, in progress", err)
	}
	close(svc.unblock)
	if err := <-done; err != nil {
		t.Fatalf("holding call: %v", err)
	}
	var h metadata.MD
	if _, err := e.health.Check(withKey(t, "k"), req, grpc.Header(&h)); err != nil || !replayed(h) {
		t.Fatalf("retry after the holder finished: %v, header %v; want a replay", err, h)
	}
	if n := svc.Runs("blocking"); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

// testHandlerOutlivesCall: the caller times out while the handler, which
// ignores its ctx, goes on past its lease. The claim must stay held (a retry
// is ABORTED, not run again) and the outcome must be stored for the retry.
func testHandlerOutlivesCall(t *testing.T, kc *client.Client, ns string) {
	const lease = time.Second
	svc := newFakeService()
	e := serve(t, kc, svc, grpcidem.WithNamespace(ns), grpcidem.WithMethods(checkMethod), grpcidem.WithLease(lease))
	req := &healthpb.HealthCheckRequest{Service: "stubborn"}
	ctx, cancel := context.WithTimeout(withKey(t, "k"), 200*time.Millisecond)
	defer cancel()
	if _, err := e.health.Check(ctx, req); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call with a short deadline: got %v; want DEADLINE_EXCEEDED", err)
	}
	<-svc.started
	time.Sleep(lease + 300*time.Millisecond) // past the lease, had it not been renewed
	if _, err := e.health.Check(withKey(t, "k"), req); status.Code(err) != codes.Aborted {
		t.Fatalf("retry while the handler still runs: got %v; want ABORTED", err)
	}
	close(svc.unblock)
	if err := <-svc.ctxErr; err == nil {
		t.Fatal("handler's ctx was not cancelled when its call ended")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var h metadata.MD
		resp, err := e.health.Check(withKey(t, "k"), req, grpc.Header(&h))
		if err == nil && replayed(h) && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
			t.Fatalf("retry after the handler finished: got %v, %v, header %v; want a replay", resp, err, h)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := svc.Runs("stubborn"); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func testDeterministicError(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(checkMethod))
	req := &healthpb.HealthCheckRequest{Service: "invalid"}
	_, err1 := e.health.Check(withKey(t, "k"), req)
	var h metadata.MD
	_, err2 := e.health.Check(withKey(t, "k"), req, grpc.Header(&h))
	st1, st2 := status.Convert(err1), status.Convert(err2)
	if st1.Code() != codes.InvalidArgument {
		t.Fatalf("first call: got %v; want INVALID_ARGUMENT", err1)
	}
	if !proto.Equal(st1.Proto(), st2.Proto()) {
		t.Fatalf("retry got status %v; want the first %v", st2.Proto(), st1.Proto())
	}
	if d := st2.Details(); len(d) != 1 {
		t.Fatalf("retry details %v; want the BadRequest", d)
	} else if br, ok := d[0].(*errdetails.BadRequest); !ok || br.GetFieldViolations()[0].GetField() != "service" {
		t.Fatalf("retry detail %v; want BadRequest on field service", d[0])
	}
	if !replayed(h) {
		t.Fatalf("retry header %v; want %s: true", h, grpcidem.ReplayedHeader)
	}
	if n := e.svc.Runs("invalid"); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func testTransientError(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(checkMethod))
	req := &healthpb.HealthCheckRequest{Service: "flaky"}
	if _, err := e.health.Check(withKey(t, "k"), req); status.Code(err) != codes.Unavailable {
		t.Fatalf("first call: got %v; want the handler's UNAVAILABLE", err)
	}
	var h metadata.MD
	resp, err := e.health.Check(withKey(t, "k"), req, grpc.Header(&h))
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING || replayed(h) {
		t.Fatalf("retry: got %v, %v, header %v; want a fresh SERVING", resp, err, h)
	}
	if _, err := e.health.Check(withKey(t, "k"), req, grpc.Header(&h)); err != nil || !replayed(h) {
		t.Fatalf("second retry: %v, header %v; want a replay of the success", err, h)
	}
	if n := e.svc.Runs("flaky"); n != 2 {
		t.Fatalf("handler ran %d times; want 2 (the failure released the key)", n)
	}
}

func testKeyReused(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(checkMethod))
	if _, err := e.health.Check(withKey(t, "k"), &healthpb.HealthCheckRequest{Service: "a"}); err != nil {
		t.Fatal(err)
	}
	_, err := e.health.Check(withKey(t, "k"), &healthpb.HealthCheckRequest{Service: "b"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("different request under the same key: got %v; want FAILED_PRECONDITION", err)
	}
	if n := e.svc.Runs("b"); n != 0 {
		t.Fatalf("handler ran %d times for the different request; want 0", n)
	}
}

func testKeyless(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod))
	for range 3 {
		var h metadata.MD
		if _, err := e.cluster.Status(withKey(t, ""), &keystorev1.StatusRequest{}, grpc.Header(&h)); err != nil || replayed(h) {
			t.Fatalf("keyless call: %v, header %v; want a fresh success", err, h)
		}
	}
	if n := e.svc.Runs("status"); n != 3 {
		t.Fatalf("handler ran %d times; want 3", n)
	}
}

func testNotOpted(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(checkMethod))
	for range 3 {
		if _, err := e.cluster.Status(withKey(t, "k"), &keystorev1.StatusRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.svc.Runs("status"); n != 3 {
		t.Fatalf("handler of a method not opted in ran %d times; want 3", n)
	}
}

func testRequireKey(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod), grpcidem.RequireKey())
	_, err := e.cluster.Status(withKey(t, ""), &keystorev1.StatusRequest{})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), grpcidem.DefaultMetadataKey) {
		t.Fatalf("keyless call: got %v; want INVALID_ARGUMENT naming %s", err, grpcidem.DefaultMetadataKey)
	}
	if _, err := e.cluster.Status(withKey(t, "k"), &keystorev1.StatusRequest{}); err != nil {
		t.Fatalf("call with a key: %v", err)
	}
	if n := e.svc.Runs("status"); n != 1 {
		t.Fatalf("handler ran %d times; want 1 (the keyless call must not run)", n)
	}
}

func testInvalidKey(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod))
	_, err := e.cluster.Status(withKey(t, strings.Repeat("k", grpcidem.MaxKeyLen+1)), &keystorev1.StatusRequest{})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("%d-byte key: got %v; want INVALID_ARGUMENT", grpcidem.MaxKeyLen+1, err)
	}
	ctx := metadata.AppendToOutgoingContext(withKey(t, "a"), grpcidem.DefaultMetadataKey, "b")
	if _, err := e.cluster.Status(ctx, &keystorev1.StatusRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("two keys: got %v; want INVALID_ARGUMENT", err)
	}
	if n := e.svc.Runs("status"); n != 0 {
		t.Fatalf("handler ran %d times; want 0", n)
	}
}

func testCustomMetadataKey(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod),
		grpcidem.WithMetadataKey("X-Request-Key"))
	for range 2 {
		ctx := metadata.AppendToOutgoingContext(withKey(t, ""), "x-request-key", "k")
		if _, err := e.cluster.Status(ctx, &keystorev1.StatusRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.svc.Runs("status"); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

// testWaitedLong: a call that waited longer than its lease for another
// holder holds its claim from the grant, not from when its Claim was sent.
// Its first heartbeat fails and is tried again while the lease runs; the
// handler, running longer than the lease, gets its response stored.
// Counting from the send, as client.Do did before client.Hold, the lease
// had ended by the time the key was granted, so Do gave the claim up at
// once (the failed heartbeat, or one sent against the ended lease): the
// handler's context was cancelled and the call failed with ABORTED, its
// outcome not stored.
func testWaitedLong(t *testing.T, tc *testcluster.Cluster, kc *client.Client, ns string) {
	const lease = 900 * time.Millisecond
	stored := anonymousKey("k") // the keystore key of an anonymous call with key k
	held, err := kc.Claim(withKey(t, ""), client.ClaimRequest{Namespace: ns, Key: stored, Lease: 2 * time.Second})
	if err != nil || held.Outcome != client.Acquired {
		t.Fatalf("first holder's claim: %+v, %v; want Acquired", held, err)
	}
	go func() {
		// The holder keeps the key past the call's lease, then gives it up.
		time.Sleep(700 * time.Millisecond)
		_, _ = kc.Heartbeat(context.Background(), ns, stored, held.Token, 2*time.Second)
		time.Sleep(700 * time.Millisecond)
		_ = kc.Release(context.Background(), ns, stored, held.Token)
	}()
	refuser := testcluster.NewHeartbeatRefuser(1)
	waiter, err := client.New(context.Background(), client.Config{
		Endpoints:   tc.Endpoints(),
		MaxInflight: -1,
		DialOptions: []grpc.DialOption{refuser.DialOption()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = waiter.Close() })
	svc := newFakeService()
	e := serve(t, waiter, svc, grpcidem.WithNamespace(ns), grpcidem.WithMethods(checkMethod),
		grpcidem.WithLease(lease), grpcidem.WithWait(5*time.Second))
	began := make(chan time.Time, 1)
	go func() {
		<-svc.started
		began <- time.Now()
		time.Sleep(lease + 400*time.Millisecond) // longer than the lease
		close(svc.unblock)
	}()
	req := &healthpb.HealthCheckRequest{Service: "stubborn"}
	sent := time.Now()
	var h metadata.MD
	resp, err := e.health.Check(withKey(t, "k"), req, grpc.Header(&h))
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING || replayed(h) {
		t.Fatalf("call that waited for the key: got %v, %v, header %v; want the handler's SERVING", resp, err, h)
	}
	if waited := (<-began).Sub(sent); waited < lease {
		t.Fatalf("the handler began %s after the call; want the call to wait longer than its %s lease", waited, lease)
	}
	if err := <-svc.ctxErr; err != nil {
		t.Fatalf("handler's context ended (%v) while it held the claim", err)
	}
	if n := refuser.Refused(); n != 1 {
		t.Fatalf("%d heartbeats refused; want 1", n)
	}
	if _, err := e.health.Check(withKey(t, "k"), req, grpc.Header(&h)); err != nil || !replayed(h) {
		t.Fatalf("retry: %v, header %v; want a replay", err, h)
	}
	if n := svc.Runs("stubborn"); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func TestUnaryServerInterceptorPanicsOnMisconfiguration(t *testing.T) {
	kc, err := client.New(context.Background(), client.Config{Endpoints: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	for _, tc := range []struct {
		name string
		c    *client.Client
		opts []grpcidem.Option
	}{
		{"nil client", nil, []grpcidem.Option{grpcidem.WithNamespace("ns")}},
		{"no namespace", kc, nil},
		{"upper-case namespace", kc, []grpcidem.Option{grpcidem.WithNamespace("Payments")}},
		{"long namespace", kc, []grpcidem.Option{grpcidem.WithNamespace(strings.Repeat("n", 65))}},
		{"empty metadata key", kc, []grpcidem.Option{grpcidem.WithNamespace("ns"), grpcidem.WithMetadataKey("")}},
		{"RequireScope with WithoutScope", kc, []grpcidem.Option{grpcidem.WithNamespace("ns"), grpcidem.WithoutScope(), grpcidem.RequireScope()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("UnaryServerInterceptor did not panic")
				}
			}()
			grpcidem.UnaryServerInterceptor(tc.c, tc.opts...)
		})
	}
}

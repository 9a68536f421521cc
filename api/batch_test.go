package api_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/api"
	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/storage"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
)

// badRequest returns err's BadRequest detail, nil when absent.
func badRequest(err error) *errdetails.BadRequest {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			return br
		}
	}
	return nil
}

func claimOp(key string) *keystorev1.BatchOperation {
	return &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Claim{Claim: &keystorev1.ClaimRequest{
		Namespace: ns, Key: key, Fingerprint: []byte("fp"), Lease: durationpb.New(time.Minute),
	}}}
}

// TestBatchAnswersEachOperationAsAlone mixes successes and every kind of
// refusal in one batch: each operation gets what its own RPC would have
// returned, and a refused one does not hold up or undo the others.
func TestBatchAnswersEachOperationAsAlone(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	held := env.acquire(t, "held", time.Minute)
	done := env.acquire(t, "done", time.Minute)
	env.complete(t, "done", done, &keystorev1.Response{Code: 200, Body: []byte("stored")})

	resp, err := env.batch.Batch(ctxT(t), &keystorev1.BatchRequest{Operations: []*keystorev1.BatchOperation{
		claimOp("fresh"),
		claimOp("done"),
		{Operation: &keystorev1.BatchOperation_Complete{Complete: &keystorev1.CompleteRequest{
			Namespace: ns, Key: "held", Token: held + 1, Response: &keystorev1.Response{Code: 200},
		}}},
		{Operation: &keystorev1.BatchOperation_Claim{Claim: &keystorev1.ClaimRequest{Namespace: "Bad NS", Key: "k"}}},
		{Operation: &keystorev1.BatchOperation_Heartbeat{Heartbeat: &keystorev1.HeartbeatRequest{
			Namespace: ns, Key: "held", Token: held, Lease: durationpb.New(2 * time.Minute),
		}}},
		{Operation: &keystorev1.BatchOperation_Release{Release: &keystorev1.ReleaseRequest{Namespace: ns, Key: "done", Token: done}}},
		{},
	}})
	if err != nil {
		t.Fatalf("Batch: %v", err)
	}
	res := resp.GetResults()
	if len(res) != 7 {
		t.Fatalf("got %d results; want 7", len(res))
	}
	if err := client.BatchResultError(res[0]); err != nil || res[0].GetClaim().GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || res[0].GetClaim().GetToken() == 0 {
		t.Errorf("claim of a fresh key: got %v, %v; want ACQUIRED with a token", res[0].GetClaim(), err)
	}
	if err := client.BatchResultError(res[1]); err != nil || res[1].GetClaim().GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED ||
		string(res[1].GetClaim().GetRecord().GetResponse().GetBody()) != "stored" {
		t.Errorf("claim of a completed key: got %v, %v; want COMPLETED with the stored response", res[1].GetClaim(), err)
	}
	checkStatus(t, client.BatchResultError(res[2]), codes.Aborted, "CLAIM_LOST")
	invalid := client.BatchResultError(res[3])
	checkStatus(t, invalid, codes.InvalidArgument, "")
	if br := badRequest(invalid); len(br.GetFieldViolations()) == 0 || br.GetFieldViolations()[0].GetField() != "namespace" {
		t.Errorf("invalid claim: got violations %v; want one naming namespace", br.GetFieldViolations())
	}
	if err := client.BatchResultError(res[4]); err != nil || res[4].GetHeartbeat().GetRecord().GetLeaseExpiresAt().AsTime().Before(t0.Add(2*time.Minute)) {
		t.Errorf("heartbeat: got %v, %v; want the lease moved to 2m from now", res[4].GetHeartbeat(), err)
	}
	checkStatus(t, client.BatchResultError(res[5]), codes.FailedPrecondition, "ALREADY_COMPLETED")
	checkStatus(t, client.BatchResultError(res[6]), codes.InvalidArgument, "")

	// What the batch did is what the store holds.
	rec, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "fresh"})
	if err != nil || rec.GetRecord().GetCreatedAt().AsTime() != res[0].GetClaim().GetRecord().GetCreatedAt().AsTime() {
		t.Errorf("Get(fresh) = %v, %v; want the record the batch's claim created", rec, err)
	}
	if _, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"}); status.Code(err) != codes.NotFound {
		t.Errorf("Get of the invalid claim's key: got %v; want NOT_FOUND", err)
	}
}

// TestBatchSameKeyTwice: two Claims of one key in one batch are decided one
// after the other, like two concurrent RPCs: exactly one acquires.
func TestBatchSameKeyTwice(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	resp, err := env.batch.Batch(ctxT(t), &keystorev1.BatchRequest{Operations: []*keystorev1.BatchOperation{claimOp("k"), claimOp("k")}})
	if err != nil {
		t.Fatalf("Batch: %v", err)
	}
	acquired := 0
	for i, r := range resp.GetResults() {
		if err := client.BatchResultError(r); err != nil {
			t.Fatalf("result %d: %v", i, err)
		}
		switch r.GetClaim().GetOutcome() {
		case keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED:
			acquired++
		case keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS:
		default:
			t.Errorf("result %d: outcome %v", i, r.GetClaim().GetOutcome())
		}
	}
	if acquired != 1 {
		t.Errorf("%d claims acquired; want exactly 1", acquired)
	}
}

// TestBatchSizeLimits: an empty or oversized batch is refused whole, naming
// the limit, and proposes nothing.
func TestBatchSizeLimits(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	over := make([]*keystorev1.BatchOperation, api.MaxBatchOperations+1)
	for i := range over {
		over[i] = claimOp("k")
	}
	for _, ops := range [][]*keystorev1.BatchOperation{nil, over} {
		_, err := env.batch.Batch(ctxT(t), &keystorev1.BatchRequest{Operations: ops})
		checkStatus(t, err, codes.InvalidArgument, "")
		br := badRequest(err)
		if v := br.GetFieldViolations(); len(v) != 1 || v[0].GetField() != "operations" {
			t.Errorf("%d operations: got violations %v; want one naming operations", len(ops), v)
		}
	}
	if p, _ := env.repl.counts(); p != 0 {
		t.Errorf("refused batches proposed %d commands; want 0", p)
	}
	if _, _, err := env.repl.store.Get(ns, "k"); err != storage.ErrNotFound {
		t.Errorf("store holds k after refused batches: %v", err)
	}
}

// oneOfEach returns a valid operation of every kind a batch takes, named
// by its field in BatchOperation's oneof. An operation kind added to the
// proto fails the tests that use it until it has a sample here: they
// check that each kind is answered by its deadline.
func oneOfEach(t *testing.T) map[string]*keystorev1.BatchOperation {
	t.Helper()
	samples := map[string]*keystorev1.BatchOperation{
		"claim": claimOp("k"),
		"complete": {Operation: &keystorev1.BatchOperation_Complete{Complete: &keystorev1.CompleteRequest{
			Namespace: ns, Key: "k", Token: 1, Response: &keystorev1.Response{Code: 200},
		}}},
		"release": {Operation: &keystorev1.BatchOperation_Release{Release: &keystorev1.ReleaseRequest{Namespace: ns, Key: "k", Token: 1}}},
		"heartbeat": {Operation: &keystorev1.BatchOperation_Heartbeat{Heartbeat: &keystorev1.HeartbeatRequest{
			Namespace: ns, Key: "k", Token: 1, Lease: durationpb.New(time.Minute),
		}}},
	}
	kinds := (&keystorev1.BatchOperation{}).ProtoReflect().Descriptor().Oneofs().ByName("operation").Fields()
	if kinds.Len() != len(samples) {
		t.Fatalf("BatchOperation has %d kinds of operation; oneOfEach has samples of %d", kinds.Len(), len(samples))
	}
	for i := range kinds.Len() {
		if samples[string(kinds.Get(i).Name())] == nil {
			t.Fatalf("oneOfEach has no sample of operation %s: add one", kinds.Get(i).Name())
		}
	}
	return samples
}

// TestStreamOperationOfEachKindKeepsItsTimeout: with no quorum, a streamed
// operation of every kind is answered UNAVAILABLE by its own timeout (a
// little before it, so that the caller hears it), although nothing ends
// the stream: the service keeps the timeout with timers of its own.
func TestStreamOperationOfEachKindKeepsItsTimeout(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	env.repl.set(func(f *fakeReplicator) { f.block = true })
	st, err := env.batch.Stream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 400 * time.Millisecond
	kindOf := make(map[uint64]string)
	var req keystorev1.StreamRequest
	for kind, op := range oneOfEach(t) {
		id := uint64(len(kindOf) + 1)
		kindOf[id] = kind
		sop := streamOp(id, op)
		sop.Timeout = durationpb.New(timeout)
		req.Operations = append(req.Operations, sop)
	}
	start := time.Now()
	if err := st.Send(&req); err != nil {
		t.Fatal(err)
	}
	for len(kindOf) > 0 {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv with %v unanswered: %v", kindOf, err)
		}
		took := time.Since(start)
		for _, r := range resp.GetResults() {
			kind, ok := kindOf[r.GetId()]
			if !ok {
				t.Fatalf("result for unknown or answered id %d", r.GetId())
			}
			delete(kindOf, r.GetId())
			checkStatus(t, client.BatchResultError(r.GetResult()), codes.Unavailable, "")
			if took > timeout || took < timeout/2 {
				t.Errorf("%s answered after %v; want within its %v timeout, and not long before it", kind, took, timeout)
			}
		}
	}
}

// TestBatchOperationOfEachKindKeepsCallersDeadline: with no quorum, a
// Batch holding an operation of every kind answers each UNAVAILABLE before
// the caller's deadline, rather than leave the caller DEADLINE_EXCEEDED.
func TestBatchOperationOfEachKindKeepsCallersDeadline(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	env.repl.set(func(f *fakeReplicator) { f.block = true })
	var req keystorev1.BatchRequest
	var kinds []string
	for kind, op := range oneOfEach(t) {
		kinds = append(kinds, kind)
		req.Operations = append(req.Operations, op)
	}
	ctx, cancel := context.WithTimeout(ctxT(t), 500*time.Millisecond)
	defer cancel()
	resp, err := env.batch.Batch(ctx, &req)
	if err != nil {
		t.Fatalf("Batch: %v; want every operation answered before the deadline", err)
	}
	for i, r := range resp.GetResults() {
		if code := status.Code(client.BatchResultError(r)); code != codes.Unavailable {
			t.Errorf("%s: got %v; want UNAVAILABLE", kinds[i], code)
		}
	}
}

// contextOnlyKV is a KeyStoreService that keeps no timer of its own: every
// method waits for its context to end.
type contextOnlyKV struct {
	keystorev1.UnimplementedKeyStoreServiceServer
}

func waitDone(ctx context.Context) error {
	<-ctx.Done()
	return status.FromContextError(ctx.Err()).Err()
}

func (contextOnlyKV) Claim(ctx context.Context, _ *keystorev1.ClaimRequest) (*keystorev1.ClaimResponse, error) {
	return nil, waitDone(ctx)
}

func (contextOnlyKV) Complete(ctx context.Context, _ *keystorev1.CompleteRequest) (*keystorev1.CompleteResponse, error) {
	return nil, waitDone(ctx)
}

func (contextOnlyKV) Release(ctx context.Context, _ *keystorev1.ReleaseRequest) (*keystorev1.ReleaseResponse, error) {
	return nil, waitDone(ctx)
}

func (contextOnlyKV) Heartbeat(ctx context.Context, _ *keystorev1.HeartbeatRequest) (*keystorev1.HeartbeatResponse, error) {
	return nil, waitDone(ctx)
}

// TestStreamTimeoutEndsContextOfOtherServices: over a KeyStoreService that
// only waits for its context, a streamed operation's context ends at the
// operation's timeout. Only the service of this package is trusted to keep
// a timeout it is not handed on the context.
func TestStreamTimeoutEndsContextOfOtherServices(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	keystorev1.RegisterBatchServiceServer(srv, api.NewBatchService(contextOnlyKV{}, api.BatchConfig{}))
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	st, err := keystorev1.NewBatchServiceClient(conn).Stream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 300 * time.Millisecond
	var req keystorev1.StreamRequest
	for _, op := range oneOfEach(t) {
		sop := streamOp(uint64(len(req.Operations)+1), op)
		sop.Timeout = durationpb.New(timeout)
		req.Operations = append(req.Operations, sop)
	}
	start := time.Now()
	if err := st.Send(&req); err != nil {
		t.Fatal(err)
	}
	for answered := 0; answered < len(req.Operations); {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv after %d of %d answers: %v", answered, len(req.Operations), err)
		}
		for _, r := range resp.GetResults() {
			answered++
			if code := status.Code(client.BatchResultError(r.GetResult())); code != codes.DeadlineExceeded {
				t.Errorf("operation %d: got %v; want DEADLINE_EXCEEDED", r.GetId(), code)
			}
		}
	}
	if took := time.Since(start); took < timeout || took > timeout+2*time.Second {
		t.Errorf("answered after %v; want at the %v timeout", took, timeout)
	}
}

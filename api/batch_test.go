package api_test

import (
	"testing"
	"time"

	"github.com/keystore-dev/keystore/api"
	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/storage"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
	if err != nil || rec.GetRecord().GetToken() != res[0].GetClaim().GetToken() {
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

package api_test

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/api"
	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
)

func streamOp(id uint64, op *keystorev1.BatchOperation) *keystorev1.StreamOperation {
	return &keystorev1.StreamOperation{Id: id, Operation: op, Timeout: durationpb.New(5 * time.Second)}
}

// recvAll reads results until the stream ends, in arrival order.
func recvAll(t *testing.T, st keystorev1.BatchService_StreamClient) ([]*keystorev1.StreamResult, error) {
	t.Helper()
	var out []*keystorev1.StreamResult
	for {
		resp, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return out, err
		}
		out = append(out, resp.GetResults()...)
	}
}

// TestStreamAnswersEachOperationByID: every operation is answered once,
// under its id, with what its own RPC would have returned; an operation
// without a timeout is refused alone, naming the field. After the caller
// closes its side, the stream ends once everything is answered.
func TestStreamAnswersEachOperationByID(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	st, err := env.batch.Stream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	noTimeout := streamOp(9, claimOp("untimed"))
	noTimeout.Timeout = nil
	send := []*keystorev1.StreamRequest{
		{Operations: []*keystorev1.StreamOperation{
			streamOp(7, claimOp("fresh")),
			streamOp(3, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Claim{Claim: &keystorev1.ClaimRequest{Namespace: "Bad NS", Key: "k"}}}),
		}},
		{Operations: []*keystorev1.StreamOperation{noTimeout}},
	}
	for _, req := range send {
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	results, err := recvAll(t, st)
	if err != nil {
		t.Fatalf("stream ended with %v; want a clean end", err)
	}
	byID := map[uint64]*keystorev1.BatchResult{}
	for _, r := range results {
		if _, dup := byID[r.GetId()]; dup {
			t.Fatalf("id %d answered twice", r.GetId())
		}
		byID[r.GetId()] = r.GetResult()
	}
	if len(byID) != 3 {
		t.Fatalf("got results for %v; want ids 3, 7 and 9", byID)
	}
	if r := byID[7]; client.BatchResultError(r) != nil || r.GetClaim().GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
		t.Errorf("claim of a fresh key: got %v; want ACQUIRED", r)
	}
	invalid := client.BatchResultError(byID[3])
	checkStatus(t, invalid, codes.InvalidArgument, "")
	if v := badRequest(invalid).GetFieldViolations(); len(v) == 0 || v[0].GetField() != "namespace" {
		t.Errorf("invalid claim: got violations %v; want one naming namespace", v)
	}
	untimed := client.BatchResultError(byID[9])
	checkStatus(t, untimed, codes.InvalidArgument, "")
	if v := badRequest(untimed).GetFieldViolations(); len(v) != 1 || v[0].GetField() != "timeout" {
		t.Errorf("operation without a timeout: got violations %v; want one naming timeout", v)
	}
	if _, _, err := env.repl.store.Get(ns, "untimed"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the refused operation wrote its key: %v", err)
	}
}

// TestStreamResultsDoNotWaitForSlowerOnes: a Claim that waits on a held key
// does not hold back the result of one sent after it in the same message.
func TestStreamResultsDoNotWaitForSlowerOnes(t *testing.T) {
	env := newEnv(t, api.Config{}, true)
	env.acquire(t, "held", time.Minute)
	st, err := env.batch.Stream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	waiting := claimOp("held")
	waiting.GetClaim().Wait = durationpb.New(time.Second)
	start := time.Now()
	if err := st.Send(&keystorev1.StreamRequest{Operations: []*keystorev1.StreamOperation{
		streamOp(1, waiting), streamOp(2, claimOp("fresh")),
	}}); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	results, err := recvAll(t, st)
	if err != nil || len(results) != 2 {
		t.Fatalf("got %v, %v; want two results", results, err)
	}
	if results[0].GetId() != 2 || results[1].GetId() != 1 {
		t.Fatalf("results arrived for ids %d then %d; want the fresh key's (2) first", results[0].GetId(), results[1].GetId())
	}
	if got := results[1].GetResult().GetClaim().GetOutcome(); got != keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS {
		t.Errorf("waiting claim: outcome %v; want IN_PROGRESS after its wait", got)
	}
	if el := time.Since(start); el < time.Second {
		t.Errorf("waiting claim answered after %v; want its whole 1s wait", el)
	}
}

// TestStreamSizeLimits: an empty or oversized message ends the stream with
// INVALID_ARGUMENT naming the limit, and proposes nothing.
func TestStreamSizeLimits(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	over := make([]*keystorev1.StreamOperation, api.MaxBatchOperations+1)
	for i := range over {
		over[i] = streamOp(uint64(i+1), claimOp("k"))
	}
	for _, ops := range [][]*keystorev1.StreamOperation{nil, over} {
		st, err := env.batch.Stream(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&keystorev1.StreamRequest{Operations: ops}); err != nil {
			t.Fatal(err)
		}
		results, err := recvAll(t, st)
		checkStatus(t, err, codes.InvalidArgument, "")
		if v := badRequest(err).GetFieldViolations(); len(v) != 1 || v[0].GetField() != "operations" {
			t.Errorf("%d operations: got violations %v; want one naming operations", len(ops), v)
		}
		if len(results) != 0 {
			t.Errorf("%d operations: got %d results; want none", len(ops), len(results))
		}
	}
	if p, _ := env.repl.counts(); p != 0 {
		t.Errorf("refused messages proposed %d commands; want 0", p)
	}
}

// TestStreamDrain: Drain lets a stream answer the operation it is running,
// then ends it with UNAVAILABLE; a stream opened afterwards ends at once.
func TestStreamDrain(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	env.repl.set(func(f *fakeReplicator) { f.block = true })
	st, err := env.batch.Stream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	op := streamOp(5, claimOp("k"))
	op.Timeout = durationpb.New(300 * time.Millisecond)
	if err := st.Send(&keystorev1.StreamRequest{Operations: []*keystorev1.StreamOperation{op}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if p, _ := env.repl.counts(); p == 1 {
			break // the operation is running
		}
		if time.Now().After(deadline) {
			t.Fatal("the operation never reached the replicator")
		}
	}
	env.bsvc.Drain()
	results, err := recvAll(t, st)
	checkStatus(t, err, codes.Unavailable, "")
	if len(results) != 1 || results[0].GetId() != 5 || client.BatchResultError(results[0].GetResult()) == nil {
		t.Errorf("got results %v; want the running operation's (id 5), an error after its timeout", results)
	}

	later, err := env.batch.Stream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = recvAll(t, later)
	checkStatus(t, err, codes.Unavailable, "")
}

// TestStreamOperationTimeout: an operation that cannot finish (no quorum)
// is answered with an error by its timeout, a little before it in fact, so
// its caller hears the answer; the stream goes on serving.
func TestStreamOperationTimeout(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	env.repl.set(func(f *fakeReplicator) { f.block = true })
	st, err := env.batch.Stream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	op := streamOp(7, claimOp("stuck"))
	op.Timeout = durationpb.New(400 * time.Millisecond)
	start := time.Now()
	if err := st.Send(&keystorev1.StreamRequest{Operations: []*keystorev1.StreamOperation{op}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	res := resp.GetResults()
	if len(res) != 1 || res[0].GetId() != 7 || client.BatchResultError(res[0].GetResult()) == nil {
		t.Fatalf("got %v; want an error for operation 7", res)
	}
	if took > 400*time.Millisecond || took < 200*time.Millisecond {
		t.Errorf("answered after %v; want within the 400ms timeout, and not long before it", took)
	}

	env.repl.set(func(f *fakeReplicator) { f.block = false })
	if err := st.Send(&keystorev1.StreamRequest{Operations: []*keystorev1.StreamOperation{streamOp(8, claimOp("free"))}}); err != nil {
		t.Fatal(err)
	}
	resp, err = st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if res := resp.GetResults(); len(res) != 1 || res[0].GetId() != 8 || client.BatchResultError(res[0].GetResult()) != nil {
		t.Errorf("got %v; want operation 8 acquired", res)
	}
}

// TestStreamOperationPastItsDeadline: an operation whose timeout has run
// out before it reaches the replicator (a tiny timeout, a busy server) is
// answered at once with an error, not left waiting for a quorum.
func TestStreamOperationPastItsDeadline(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	env.repl.set(func(f *fakeReplicator) { f.block = true })
	st, err := env.batch.Stream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var ops []*keystorev1.StreamOperation
	for i := uint64(1); i <= 20; i++ {
		op := streamOp(i, claimOp(fmt.Sprintf("late-%d", i)))
		op.Timeout = durationpb.New(time.Duration(i) * time.Microsecond)
		ops = append(ops, op)
	}
	if err := st.Send(&keystorev1.StreamRequest{Operations: ops}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for n := 0; n < len(ops); {
			resp, err := st.Recv()
			if err != nil {
				done <- err
				return
			}
			for _, r := range resp.GetResults() {
				if client.BatchResultError(r.GetResult()) == nil {
					done <- fmt.Errorf("operation %d succeeded against a stuck replicator", r.GetId())
					return
				}
				n++
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("operations past their deadline still unanswered after 3 s")
	}
}

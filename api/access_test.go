package api_test

import (
	"context"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/api"
	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestLiveTokenGoesToItsHolderOnly replays the attack the contract's
// Security section closes: a second caller read the holder's token from
// its own IN_PROGRESS answer (or from Get), completed the holder's claim
// with a forged body, and every retry then replayed the forgery. No answer
// but the ACQUIRED one carries a live claim's token now, so the forger has
// none to present; once completed, the record's token may show.
func TestLiveTokenGoesToItsHolderOnly(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	holder := env.claim(t, "order-9", time.Minute)
	if holder.GetToken() == 0 || holder.GetRecord().GetToken() != holder.GetToken() {
		t.Fatalf("ACQUIRED answer: token %d, record token %d; want the token in both", holder.GetToken(), holder.GetRecord().GetToken())
	}
	ctx := ctxT(t)
	seen := map[string]uint64{}
	second := env.claim(t, "order-9", time.Minute)
	seen["IN_PROGRESS Claim"] = second.GetToken() | second.GetRecord().GetToken()
	waited, err := env.client.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "order-9", Wait: durationpb.New(50 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	seen["IN_PROGRESS Claim after a wait"] = waited.GetToken() | waited.GetRecord().GetToken()
	got, err := env.client.Get(ctx, &keystorev1.GetRequest{Namespace: ns, Key: "order-9"})
	if err != nil {
		t.Fatal(err)
	}
	seen["Get"] = got.GetRecord().GetToken()
	stale, err := env.client.Get(ctx, &keystorev1.GetRequest{Namespace: ns, Key: "order-9", Consistency: keystorev1.Consistency_CONSISTENCY_STALE})
	if err != nil {
		t.Fatal(err)
	}
	seen["STALE Get"] = stale.GetRecord().GetToken()
	br, err := env.bsvc.Batch(ctx, &keystorev1.BatchRequest{Operations: []*keystorev1.BatchOperation{claimOp("order-9")}})
	if err != nil {
		t.Fatal(err)
	}
	c := br.GetResults()[0].GetClaim()
	seen["IN_PROGRESS in a Batch"] = c.GetToken() | c.GetRecord().GetToken()
	for what, tok := range seen {
		if tok != 0 {
			t.Errorf("%s showed the live claim's token %d to a caller who does not hold it", what, tok)
		}
	}
	// The forger's best guess is 0; the holder completes.
	_, err = env.client.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "order-9", Token: seen["Get"], Response: &keystorev1.Response{Code: 200, Body: []byte("forged")}})
	if status.Code(err) == codes.OK {
		t.Fatal("a Complete with the token read from an answer succeeded")
	}
	env.complete(t, "order-9", holder.GetToken(), &keystorev1.Response{Code: 201, Body: []byte("real")})
	replay := env.claim(t, "order-9", time.Minute)
	if string(replay.GetRecord().GetResponse().GetBody()) != "real" || replay.GetRecord().GetToken() != holder.GetToken() {
		t.Fatalf("replay: %v; want the holder's response and its token", replay.GetRecord())
	}
}

// fakeAccess grants the namespaces in ns and shows live tokens to admins,
// judged by the x-test-principal metadata the test sends.
type fakeAccess struct{ ns map[string]bool }

func (a fakeAccess) principal(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-test-principal"); len(v) == 1 {
		return v[0]
	}
	return ""
}

func (a fakeAccess) CheckNamespace(ctx context.Context, namespace string) error {
	if a.principal(ctx) == "admin" || a.ns[namespace] {
		return nil
	}
	return status.Error(codes.PermissionDenied, "permission denied")
}

func (a fakeAccess) SeesLiveTokens(ctx context.Context) bool { return a.principal(ctx) == "admin" }

// TestAccessIsAskedForEveryOperation: each RPC and each operation of a
// Batch asks Access about its own namespace, and only a caller Access
// lets see live tokens gets them from Get.
func TestAccessIsAskedForEveryOperation(t *testing.T) {
	env := newEnv(t, api.Config{Access: fakeAccess{ns: map[string]bool{ns: true}}}, false)
	held := env.claim(t, "k", time.Minute)
	ctx := ctxT(t)
	other := "refunds"
	denied := []struct {
		name string
		call func() error
	}{
		{"Claim", func() error {
			_, err := env.client.Claim(ctx, &keystorev1.ClaimRequest{Namespace: other, Key: "k"})
			return err
		}},
		{"Complete", func() error {
			_, err := env.client.Complete(ctx, &keystorev1.CompleteRequest{Namespace: other, Key: "k", Token: 1, Response: &keystorev1.Response{}})
			return err
		}},
		{"Release", func() error {
			_, err := env.client.Release(ctx, &keystorev1.ReleaseRequest{Namespace: other, Key: "k", Token: 1})
			return err
		}},
		{"Heartbeat", func() error {
			_, err := env.client.Heartbeat(ctx, &keystorev1.HeartbeatRequest{Namespace: other, Key: "k", Token: 1})
			return err
		}},
		{"Get", func() error {
			_, err := env.client.Get(ctx, &keystorev1.GetRequest{Namespace: other, Key: "k"})
			return err
		}},
		{"Batch", func() error {
			resp, err := env.bsvc.Batch(ctx, &keystorev1.BatchRequest{Operations: []*keystorev1.BatchOperation{
				claimOp("fine"),
				{Operation: &keystorev1.BatchOperation_Claim{Claim: &keystorev1.ClaimRequest{Namespace: other, Key: "k"}}},
			}})
			if err != nil {
				return err
			}
			if err := client.BatchResultError(resp.GetResults()[0]); err != nil {
				t.Errorf("Batch: the granted operation failed: %v", err)
			}
			return client.BatchResultError(resp.GetResults()[1])
		}},
	}
	for _, d := range denied {
		if code := status.Code(d.call()); code != codes.PermissionDenied {
			t.Errorf("%s in a namespace not granted: got %v; want PERMISSION_DENIED", d.name, code)
		}
	}
	admin := metadata.AppendToOutgoingContext(ctx, "x-test-principal", "admin")
	got, err := env.client.Get(admin, &keystorev1.GetRequest{Namespace: ns, Key: "k"})
	if err != nil || got.GetRecord().GetToken() != held.GetToken() {
		t.Errorf("admin's Get: %v, %v; want the live token %d", got.GetRecord(), err, held.GetToken())
	}
	got, err = env.client.Get(ctx, &keystorev1.GetRequest{Namespace: ns, Key: "k"})
	if err != nil || got.GetRecord().GetToken() != 0 {
		t.Errorf("non-admin's Get: %v, %v; want no token", got.GetRecord(), err)
	}
}

// TestStreamOperationsAreCheckedAndHideLiveTokens: on a Stream, as in a
// Batch, each operation asks Access about its own namespace, and an
// IN_PROGRESS answer carries no token.
func TestStreamOperationsAreCheckedAndHideLiveTokens(t *testing.T) {
	env := newEnv(t, api.Config{Access: fakeAccess{ns: map[string]bool{ns: true}}}, false)
	env.acquire(t, "held", time.Minute)
	st, err := env.batch.Stream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	denied := &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Claim{Claim: &keystorev1.ClaimRequest{Namespace: "refunds", Key: "k"}}}
	if err := st.Send(&keystorev1.StreamRequest{Operations: []*keystorev1.StreamOperation{
		streamOp(1, claimOp("fresh")), streamOp(2, denied), streamOp(3, claimOp("held")),
	}}); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	results, err := recvAll(t, st)
	if err != nil || len(results) != 3 {
		t.Fatalf("got %v, %v; want three results", results, err)
	}
	byID := map[uint64]*keystorev1.BatchResult{}
	for _, r := range results {
		byID[r.GetId()] = r.GetResult()
	}
	if err := client.BatchResultError(byID[1]); err != nil || byID[1].GetClaim().GetToken() == 0 {
		t.Errorf("granted claim on the stream: %v, %v; want ACQUIRED with its token", byID[1], err)
	}
	if code := status.Code(client.BatchResultError(byID[2])); code != codes.PermissionDenied {
		t.Errorf("claim in a namespace not granted, on the stream: %v; want PERMISSION_DENIED", code)
	}
	held := byID[3].GetClaim()
	if held.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS || held.GetToken() != 0 || held.GetRecord().GetToken() != 0 {
		t.Errorf("IN_PROGRESS on the stream: %v; want no token", held)
	}
}

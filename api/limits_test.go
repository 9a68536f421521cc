package api_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/api"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// retryInfo returns the RetryInfo of a RESOURCE_EXHAUSTED, or fails.
func retryInfo(t *testing.T, err error, limit string) *errdetails.RetryInfo {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), limit) {
		t.Fatalf("got %v; want RESOURCE_EXHAUSTED naming %s", err, limit)
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri
		}
	}
	t.Fatalf("%v has no RetryInfo", err)
	return nil
}

// TestWaitingClaimsAreBounded: the security report's 2,000 concurrent
// wait=1h Claims were all accepted. Beyond the per-namespace and per-node
// caps a waiting Claim is refused with RESOURCE_EXHAUSTED and RetryInfo,
// a Claim that does not wait still goes through, and the slots free up
// when the waits end.
func TestWaitingClaimsAreBounded(t *testing.T) {
	env := newEnv(t, api.Config{MaxWaitingClaims: 6, MaxWaitingClaimsPerNamespace: 3}, true)
	env.claim(t, "held", time.Hour)
	if _, err := env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: "other", Key: "held", Lease: durationpb.New(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wait := func(ns string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A probe below may hold a slot for a moment: try again.
			for ctx.Err() == nil {
				_, err := env.client.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "held", Wait: durationpb.New(time.Hour)})
				if status.Code(err) != codes.ResourceExhausted {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	for range 3 {
		wait(ns)
	}
	for range 3 {
		wait("other")
	}
	waitClaim := func(namespace string) error {
		c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := env.client.Claim(c, &keystorev1.ClaimRequest{Namespace: namespace, Key: "held", Wait: durationpb.New(time.Hour)})
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := waitClaim(ns)
		if status.Code(err) == codes.ResourceExhausted {
			retryInfo(t, err, "--max-waiting-claims-per-namespace")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a 4th waiting Claim in one namespace: %v; want RESOURCE_EXHAUSTED", err)
		}
		time.Sleep(50 * time.Millisecond) // let the waiters in: a probe holds a slot too
	}
	for {
		err := waitClaim("third")
		if status.Code(err) == codes.ResourceExhausted {
			retryInfo(t, err, "--max-waiting-claims")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a 7th waiting Claim on the node: %v; want RESOURCE_EXHAUSTED", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := env.claim(t, "held", time.Hour); r.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS {
		t.Fatalf("a Claim without wait: %v; want IN_PROGRESS", r)
	}
	cancel()
	wg.Wait()
	// The server learns of the cancellations a moment after the callers.
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := waitClaim(ns)
		if status.Code(err) != codes.ResourceExhausted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5s after the waits ended: %v; want the slots free", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNamespaceRate: past its bucket a namespace is refused with
// RESOURCE_EXHAUSTED and a RetryInfo delay; other namespaces are not.
func TestNamespaceRate(t *testing.T) {
	env := newEnv(t, api.Config{NamespaceRate: 2, NamespaceBurst: 3}, false)
	var refused error
	for i := range 10 {
		if _, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"}); status.Code(err) == codes.ResourceExhausted {
			if i < 3 {
				t.Fatalf("operation %d refused within the burst of 3: %v", i+1, err)
			}
			refused = err
			break
		}
	}
	if refused == nil {
		t.Fatal("10 operations at once at a rate of 2/s: none refused")
	}
	if ri := retryInfo(t, refused, "--namespace-rate"); ri.GetRetryDelay().AsDuration() <= 0 || ri.GetRetryDelay().AsDuration() > time.Second {
		t.Fatalf("retry delay %v; want in (0, 1s] at 2/s", ri.GetRetryDelay().AsDuration())
	}
	if _, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: "other", Key: "k"}); status.Code(err) == codes.ResourceExhausted {
		t.Fatalf("another namespace: %v; want its own bucket", err)
	}
}

// TestNamespaceQuotas: a namespace at its quota of records refuses Claims
// of new keys (RESOURCE_EXHAUSTED with RetryInfo, the flag named) but not
// retries of the keys it holds, and takes new ones once a record is
// released; a Complete that would pass the bytes quota is refused and
// changes nothing. Other namespaces are not affected.
func TestNamespaceQuotas(t *testing.T) {
	env := newEnv(t, api.Config{MaxNamespaceRecords: 2, MaxNamespaceBytes: 600}, false)
	a := env.acquire(t, "a", time.Minute)
	b := env.acquire(t, "b", time.Minute)
	_, err := env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: ns, Key: "c"})
	retryInfo(t, err, "--namespace-max-records")
	if r := env.claim(t, "a", time.Minute); r.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS {
		t.Fatalf("a retry at the quota: %v; want IN_PROGRESS", r)
	}
	if _, err := env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: "other", Key: "c"}); err != nil {
		t.Fatalf("another namespace: %v", err)
	}
	_, err = env.client.Complete(ctxT(t), &keystorev1.CompleteRequest{Namespace: ns, Key: "a", Token: a, Response: &keystorev1.Response{Body: make([]byte, 600)}})
	retryInfo(t, err, "--namespace-max-bytes")
	if got, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "a"}); err != nil || got.GetRecord().GetState() != keystorev1.RecordState_RECORD_STATE_IN_PROGRESS {
		t.Fatalf("after the refused Complete: %v, %v; want still IN_PROGRESS", got, err)
	}
	env.complete(t, "a", a, &keystorev1.Response{Code: 200, Body: []byte("small")})
	if _, err := env.client.Release(ctxT(t), &keystorev1.ReleaseRequest{Namespace: ns, Key: "b", Token: b}); err != nil {
		t.Fatal(err)
	}
	if r := env.claim(t, "c", time.Minute); r.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
		t.Fatalf("a new key once a record was released: %v; want ACQUIRED", r)
	}
}

package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/expiry"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// On an idle cluster a lapsed lease is taken over 1-2 s later: log time
// moves without traffic.
func TestClusterIdleTakeover(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	first, err := c.Client("n1").Claim(ctxT(t, 5*time.Second), &keystorev1.ClaimRequest{
		Namespace: "test", Key: "idle", Lease: durationpb.New(time.Second), Owner: "first",
	})
	if err != nil || first.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
		t.Fatalf("first claim: %v %v", first, err)
	}
	time.Sleep(1100 * time.Millisecond)
	second, err := c.Client("n2").Claim(ctxT(t, 5*time.Second), &keystorev1.ClaimRequest{
		Namespace: "test", Key: "idle", Owner: "second",
	})
	if err != nil {
		t.Fatal(err)
	}
	if second.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || second.Record.Attempt != 2 || second.Token <= first.Token {
		t.Fatalf("claim 1.1s after a 1s lease: got %v attempt %d token %d; want a takeover (ACQUIRED, attempt 2, token > %d)",
			second.Outcome, second.Record.GetAttempt(), second.Token, first.Token)
	}
	// The first holder is fenced off.
	_, err = c.Client("n3").Complete(ctxT(t, 5*time.Second), &keystorev1.CompleteRequest{Namespace: "test", Key: "idle", Token: first.Token})
	if status.Code(err) != codes.Aborted {
		t.Fatalf("complete with the fenced token: got %v; want ABORTED", err)
	}
}

// Expired records are invisible at once, even before a sweep: with
// sweeping off, a record past its retention is NOT_FOUND on an idle
// cluster, yet still on disk.
func TestClusterExpiredInvisibleBeforeSweep(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Expiry: expiry.Config{Interval: time.Hour}})
	if _, err := c.Client("n1").Claim(ctxT(t, 5*time.Second), &keystorev1.ClaimRequest{
		Namespace: "test", Key: "short", Retention: durationpb.New(time.Second),
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // idle: only tick entries move log time
	for _, n := range c.Names {
		_, err := c.Client(n).Get(ctxT(t, 5*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: "short"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("get on %s after retention: got %v; want NOT_FOUND", n, err)
		}
		if got := c.Server(n).Store().StoredRecords(); got != 1 {
			t.Fatalf("%s stores %d records; want 1 (no sweep ran)", n, got)
		}
	}
	got, err := c.Client("n2").Claim(ctxT(t, 5*time.Second), &keystorev1.ClaimRequest{Namespace: "test", Key: "short"})
	if err != nil || got.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || got.Record.Attempt != 1 {
		t.Fatalf("claim of an expired key: got %v %v; want a fresh ACQUIRED", got, err)
	}
}

// The leader sweeps expired records off every replica, through the log:
// afterwards all three store nothing and have identical state.
func TestClusterExpirySweepsEveryReplica(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Expiry: expiry.Config{BatchSize: 7}})
	for i := 0; i < 50; i++ {
		cl := c.Client(c.Names[i%3])
		resp, err := cl.Claim(ctxT(t, 5*time.Second), &keystorev1.ClaimRequest{
			Namespace: "test", Key: fmt.Sprintf("e%d", i), Retention: durationpb.New(time.Second),
		})
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := cl.Complete(ctxT(t, 5*time.Second), &keystorev1.CompleteRequest{
				Namespace: "test", Key: fmt.Sprintf("e%d", i), Token: resp.Token, Retention: durationpb.New(time.Second),
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := c.Client("n1").Claim(ctxT(t, 5*time.Second), &keystorev1.ClaimRequest{Namespace: "test", Key: "keeper"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		done := true
		for _, n := range c.Names {
			if c.Server(n).Store().StoredRecords() != 1 {
				done = false
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("records not swept within 10s: n1 %d, n2 %d, n3 %d", c.Server("n1").Store().StoredRecords(),
				c.Server("n2").Store().StoredRecords(), c.Server("n3").Store().StoredRecords())
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.AssertSameState()
	if _, err := c.Client("n3").Get(ctxT(t, 5*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: "keeper"}); err != nil {
		t.Fatalf("the unexpired record: %v", err)
	}
}

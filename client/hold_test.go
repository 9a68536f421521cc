package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/internal/testcluster"
	"google.golang.org/grpc"
)

// refusingClient returns a client of tc whose first refuse heartbeats fail.
func refusingClient(t *testing.T, tc *testcluster.Cluster, refuse int64) (*client.Client, *testcluster.HeartbeatRefuser) {
	t.Helper()
	h := testcluster.NewHeartbeatRefuser(refuse)
	c, err := client.New(context.Background(), client.Config{
		Endpoints:   tc.Endpoints(),
		MaxInflight: -1,
		DialOptions: []grpc.DialOption{h.DialOption()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, h
}

func TestHold(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	const lease = 600 * time.Millisecond

	// A failed heartbeat is tried again while the lease runs: the claim
	// is held past its first lease and completes.
	t.Run("KeptThroughAFailedHeartbeat", func(t *testing.T) {
		t.Parallel()
		c, refuser := refusingClient(t, tc, 1)
		claim, err := c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: "hold", Key: "kept", Lease: lease})
		if err != nil || claim.Outcome != client.Acquired {
			t.Fatalf("Claim: %+v, %v; want Acquired", claim, err)
		}
		held, stop := c.Hold(context.Background(), "hold", "kept", claim.Token, lease)
		select {
		case <-held.Done():
			t.Fatalf("claim lost: %v; want it kept", context.Cause(held))
		case <-time.After(2 * lease):
		}
		if err := stop(); err != nil {
			t.Fatalf("stop: %v; want the claim held throughout", err)
		}
		if n := refuser.Refused(); n != 1 {
			t.Fatalf("%d heartbeats refused; want 1", n)
		}
		if _, err := c.Complete(ctxT(t, 5*time.Second), client.CompleteRequest{Namespace: "hold", Key: "kept", Token: claim.Token}); err != nil {
			t.Fatalf("Complete after the hold: %v", err)
		}
	})

	// With every heartbeat failing, the claim counts as lost once a whole
	// lease has passed, not before.
	t.Run("LostAfterAWholeLeaseWithoutHeartbeat", func(t *testing.T) {
		t.Parallel()
		c, refuser := refusingClient(t, tc, 1<<30)
		claim, err := c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: "hold", Key: "lost", Lease: lease})
		if err != nil || claim.Outcome != client.Acquired {
			t.Fatalf("Claim: %+v, %v; want Acquired", claim, err)
		}
		began := time.Now()
		held, stop := c.Hold(context.Background(), "hold", "lost", claim.Token, lease)
		defer stop()
		select {
		case <-held.Done():
		case <-time.After(lease + 3*time.Second):
			t.Fatal("claim still held with every heartbeat failing")
		}
		if d := time.Since(began); d < lease {
			t.Fatalf("claim lost after %s; want not before the %s lease ran out", d, lease)
		}
		if cause := context.Cause(held); !errors.Is(cause, client.ErrClaimLost) {
			t.Fatalf("held context's cause: %v; want ErrClaimLost", cause)
		}
		if err := stop(); !errors.Is(err, client.ErrClaimLost) {
			t.Fatalf("stop: %v; want ErrClaimLost", err)
		}
		if n := refuser.Refused(); n < 2 {
			t.Fatalf("%d heartbeats refused; want the hold to have tried at least twice", n)
		}
	})

	// The hold outlives its context: only stop ends it.
	t.Run("OutlivesItsContext", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, tc.Endpoints()...)
		claim, err := c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: "hold", Key: "outlive", Lease: lease})
		if err != nil || claim.Outcome != client.Acquired {
			t.Fatalf("Claim: %+v, %v; want Acquired", claim, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		held, stop := c.Hold(ctx, "hold", "outlive", claim.Token, lease)
		cancel()
		<-held.Done() // follows ctx
		time.Sleep(2 * lease)
		other, err := c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: "hold", Key: "outlive"})
		if err != nil || other.Outcome != client.InProgress {
			t.Fatalf("another Claim after two leases: %+v, %v; want InProgress (the hold goes on)", other, err)
		}
		if err := stop(); err != nil {
			t.Fatalf("stop: %v; want the claim held throughout", err)
		}
	})
}

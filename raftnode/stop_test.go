package raftnode

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	peerv1 "github.com/keystore-dev/keystore/proto/keystore/peer/v1"
	"go.etcd.io/raft/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gateCore is a raftCore whose first Propose waits until the test releases
// it (a round in flight while the node fails), and which refuses every
// proposal with raft.ErrStopped (the core stopped meanwhile).
type gateCore struct {
	raftCore
	once    sync.Once
	entered chan struct{} // closed when the first Propose is in
	release chan struct{}
}

func (g *gateCore) Propose(...[]byte) error {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.entered)
		<-g.release
	}
	return raft.ErrStopped
}

func (g *gateCore) Pump()               {}
func (g *gateCore) Status() raft.Status { return raft.Status{} }

// TestFailureWithProposersQueued: a storage failure while one packer round
// is in flight and two proposers are queued behind it answers every one of
// them ErrStopped at once; the rounds that follow fail onto the same
// proposers without panicking; later proposals, with or without a known
// leader, fail at once too.
func TestFailureWithProposersQueued(t *testing.T) {
	sm := &memSM{}
	n, err := New(Config{ID: 1, Peers: memPeers(1)}, newMemLog(sm), sm)
	if err != nil {
		t.Fatal(err)
	}
	g := &gateCore{entered: make(chan struct{}), release: make(chan struct{})}
	n.rn = g
	n.lead.Store(1)

	type result struct {
		cmd  string
		err  error
		took time.Duration
	}
	results := make(chan result, 3)
	propose := func(cmd string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := n.Propose(ctx, 0, keyCmd(cmd))
		results <- result{cmd, err, time.Since(start)}
	}
	go propose("a")
	<-g.entered // a's round is in raft's hands
	go propose("b")
	go propose("c")
	waitFor(t, "two queued proposals", func() bool {
		n.pack.mu.Lock()
		defer n.pack.mu.Unlock()
		return len(n.pack.queue) == 2
	})

	n.stopOnFailure(errors.New("disk gone"))
	failedAt := time.Now()
	close(g.release) // a's round fails; the next proposes b and c
	for range 3 {
		select {
		case r := <-results:
			if r.err != ErrStopped {
				t.Errorf("proposer %s: got %v; want ErrStopped", r.cmd, r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("a proposer still waits 5s after the failure")
		}
	}
	if waited := time.Since(failedAt); waited > 2*time.Second {
		t.Errorf("proposers answered %v after the failure; want at once", waited)
	}
	waitFor(t, "an idle packer", func() bool {
		n.pack.mu.Lock()
		defer n.pack.mu.Unlock()
		return !n.pack.busy
	})
	if n.Status().Healthy {
		t.Error("Status().Healthy after a storage failure; want false")
	}

	for _, lead := range []uint64{1, 0} {
		n.lead.Store(lead)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		_, err := n.Propose(ctx, 0, []byte("late"))
		cancel()
		if err != ErrStopped || time.Since(start) > time.Second {
			t.Errorf("Propose after the failure (leader %d): got %v after %v; want ErrStopped at once", lead, err, time.Since(start))
		}
	}
}

// hammer runs workers proposers, each proposing until it gets an error,
// and returns a channel that yields each worker's error.
func hammer(n *Node, workers int, forward bool) <-chan error {
	errs := make(chan error, workers)
	ps := n.PeerServer()
	for w := range workers {
		go func() {
			for i := 0; ; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				cmd := keyCmd(fmt.Sprintf("w%d-%d", w, i))
				var err error
				if forward && w%2 == 1 {
					// A follower's forwarded proposal, as the peer gRPC
					// server runs it.
					_, err = ps.Forward(ctx, &peerv1.ForwardRequest{RequestId: newRequestID(), Payload: cmd, ClusterId: n.cfg.ClusterID})
				} else {
					_, err = n.Propose(ctx, 0, cmd)
				}
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	return errs
}

// collect waits for workers errors; none may take longer than 5s after the
// node stopped.
func collect(t *testing.T, errs <-chan error, workers int) []error {
	t.Helper()
	var got []error
	timeout := time.After(5 * time.Second)
	for range workers {
		select {
		case err := <-errs:
			got = append(got, err)
		case <-timeout:
			t.Fatalf("%d of %d proposers still wait 5s after the node stopped", workers-len(got), workers)
		}
	}
	return got
}

// TestStorageFailureWithProposersQueued: a storage failure under load stops
// the node: every proposer, queued or in flight, hears ErrStopped promptly
// (no panic, no hang), and the node reports unhealthy.
func TestStorageFailureWithProposersQueued(t *testing.T) {
	sm := &memSM{}
	n, log := startLeader(t, sm)
	log.mu.Lock()
	log.appendDelay = 200 * time.Microsecond
	log.mu.Unlock()
	const workers = 16
	errs := hammer(n, workers, false)
	time.Sleep(100 * time.Millisecond)
	log.fail(errors.New("disk gone"))
	for _, err := range collect(t, errs, workers) {
		if err != ErrStopped {
			t.Errorf("proposer: got %v; want ErrStopped", err)
		}
	}
	if n.Status().Healthy {
		t.Error("Status().Healthy after a storage failure; want false")
	}
}

// TestStopWithProposalsAndForwardsInFlight: Stop under load, with Forward
// handlers running, answers every proposer ErrStopped (a forwarding peer
// UNAVAILABLE) promptly, and returns.
func TestStopWithProposalsAndForwardsInFlight(t *testing.T) {
	sm := &memSM{}
	n, log := startLeader(t, sm)
	log.mu.Lock()
	log.appendDelay = 200 * time.Microsecond
	log.mu.Unlock()
	const workers = 16
	errs := hammer(n, workers, true)
	time.Sleep(100 * time.Millisecond)
	stopped := make(chan struct{})
	go func() {
		n.Stop()
		close(stopped)
	}()
	for _, err := range collect(t, errs, workers) {
		if err != ErrStopped && status.Code(err) != codes.Unavailable {
			t.Errorf("proposer: got %v; want ErrStopped or UNAVAILABLE", err)
		}
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop has not returned after 5s")
	}
}

package server_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// A follower that missed many writes and restarts must not report SERVING
// before it has applied what the cluster had committed when it restarted
// (issue 17, defect 6: a restarted follower reported SERVING at applied
// index 622 with the cluster at 16,912). Raft tells a follower commit
// indexes only up to what it has matched, so by its own view it is caught
// up until the leader's appends (or snapshot) arrive.
//
// That window is one round trip, which a check every 100 ms mostly misses,
// so the test holds it open: the cluster moves to a new term while the
// follower is down, and the restarted follower's fsyncs are slow. The first
// heartbeat it hears then names the leader at once, but its answer waits for
// the new term to be synced, and the leader sends nothing else before the
// answer.
func TestHealthRestartedFollowerServesOnlyCaughtUp(t *testing.T) {
	slow := &slowSyncs{delay: map[string]time.Duration{}}
	c := testcluster.Start(t, testcluster.Options{
		// Compact often: the restarted follower is behind the log's start.
		Raft:   raftnode.Config{SnapshotEntries: 1000, KeepEntries: 200},
		WrapFS: slow.wrap,
	})
	lead := c.Leader()
	follower := otherNode(c, lead)
	c.StopNode(follower)
	term := c.Server(lead).Status().Term
	c.StopNode(lead)
	c.StartNode(lead)
	lead = waitLeader(t, c, term+1)
	writeKeys(t, c.Client(lead), "h", 3000, 32)
	target := c.Server(lead).Status().Commit

	slow.set(follower, 300*time.Millisecond)
	c.StartNode(follower)
	// A connection of its own: the cluster's connection to the follower
	// may wait out a reconnect backoff from when the follower was down.
	conn, err := grpc.NewClient(c.Endpoint(follower), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	watch, err := healthpb.NewHealthClient(conn).Watch(ctxT(t, 60*time.Second),
		&healthpb.HealthCheckRequest{Service: keystorev1.KeyStoreService_ServiceDesc.ServiceName}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := watch.Recv()
		if err != nil {
			t.Fatalf("watching %s's health: %v", follower, err)
		}
		// Read after the report: the applied index can only have grown
		// since the node decided to serve.
		st := c.Server(follower).Status()
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			continue
		}
		if st.Applied < target {
			t.Fatalf("restarted follower %s reported SERVING at applied index %d; want >= %d (the leader's commit index when it restarted)", follower, st.Applied, target)
		}
		t.Logf("%s SERVING at applied index %d (target %d, %d snapshots received)", follower, st.Applied, target, st.SnapshotsApplied)
		break
	}
	slow.set(follower, 0)
	c.AssertSameState()
}

// waitLeader waits until a running node leads in term minTerm or later and
// returns its name.
func waitLeader(t *testing.T, c *testcluster.Cluster, minTerm uint64) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if n := c.Leader(); n != "" && c.Server(n).Status().Term >= minTerm {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader in term %d or later after 15s", minTerm)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writeKeys claims n keys prefix0..prefix<n-1> through kv with the given
// number of concurrent callers.
func writeKeys(t *testing.T, kv keystorev1.KeyStoreServiceClient, prefix string, n, callers int) {
	t.Helper()
	var wg sync.WaitGroup
	errc := make(chan error, callers)
	for w := 0; w < callers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += callers {
				if _, err := kv.Claim(ctxT(t, 10*time.Second), &keystorev1.ClaimRequest{Namespace: "test", Key: fmt.Sprintf("%s%d", prefix, i)}); err != nil {
					errc <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
}

// slowSyncs delays every fsync of a node's storage by the node's delay
// (none unless set).
type slowSyncs struct {
	mu    sync.Mutex
	delay map[string]time.Duration
}

func (s *slowSyncs) set(node string, d time.Duration) {
	s.mu.Lock()
	s.delay[node] = d
	s.mu.Unlock()
}

// wrap is a testcluster.Options.WrapFS.
func (s *slowSyncs) wrap(node string, fs vfs.FS) vfs.FS {
	return errorfs.Wrap(fs, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData {
			s.mu.Lock()
			d := s.delay[node]
			s.mu.Unlock()
			time.Sleep(d)
		}
		return nil
	}))
}

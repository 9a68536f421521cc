package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"github.com/keystore-dev/keystore/server"
	"github.com/prometheus/client_golang/prometheus"
)

// waitGossip waits until node n's member list shows member m in gossip
// state want.
func waitGossip(t *testing.T, c *testcluster.Cluster, n, m, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := members(t, c, n)[m].GetGossipState()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s sees %s in gossip as %q; want %q", n, m, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestGossipShowsFailuresButNeverRemoves: gossip shows a member that
// stopped as left, one cut off from gossip as dead; neither stops being a
// voter, and the one cut off from gossip alone keeps serving through Raft.
func TestGossipShowsFailuresButNeverRemoves(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Gossip: true})
	for _, n := range c.Names {
		waitGossip(t, c, c.Names[0], n, "alive")
	}
	cut := c.Follower()
	lead := c.Leader()
	if err := c.Server(cut).Gossip().Shutdown(); err != nil { // no goodbye: a failure as gossip sees it
		t.Fatal(err)
	}
	waitGossip(t, c, lead, cut, "dead")
	time.Sleep(2 * time.Second) // time in which anything automatic would have acted
	if m := members(t, c, lead)[cut]; m == nil || m.GetIsLearner() {
		t.Fatalf("the member cut off from gossip is %v on the leader; want a voter", m)
	}
	lifecycle(t, c.Client(cut), "through the node gossip finds dead")
	if v := gauge(t, c.Server(lead), "keystore_member_gossip_state", map[string]string{"member": cut, "state": "dead"}); v != 1 {
		t.Fatalf("keystore_member_gossip_state{member=%s,state=dead} = %v on the leader; want 1", cut, v)
	}
	if v := gauge(t, c.Server(lead), "keystore_member_role", map[string]string{"member": cut, "role": "voter"}); v != 1 {
		t.Fatalf("keystore_member_role{member=%s,role=voter} = %v on the leader; want 1", cut, v)
	}

	other := otherNode(c, cut)
	if other == lead {
		for _, n := range c.Names {
			if n != cut && n != lead {
				other = n
			}
		}
	}
	c.StopNode(other)
	waitGossip(t, c, lead, other, "left")
	if m := members(t, c, lead)[other]; m == nil || m.GetIsLearner() {
		t.Fatalf("the stopped member is %v on the leader; want a voter", m)
	}
	// Two voters of three: still a quorum, with the node gossip finds dead.
	lifecycle(t, c.Client(lead), "with one stopped")
}

// TestGossipMovedNodeKeepsIdentity: a node restarted on a new peer
// address (its data kept) is found there by gossip: the others dial its
// new address, and it serves as the same member.
func TestGossipMovedNodeKeepsIdentity(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Gossip: true})
	moved := c.Follower()
	id := members(t, c, c.Leader())[moved].GetId()
	c.Move(moved)
	c.WaitServing(15 * time.Second)
	lifecycle(t, c.Client(moved), "after the move")
	m := members(t, c, c.Leader())[moved]
	if m.GetId() != id {
		t.Fatalf("the moved node's id is %s; want %s", m.GetId(), id)
	}
	deadline := time.Now().Add(10 * time.Second)
	for members(t, c, c.Leader())[moved].GetPeerAddress() != c.PeerEndpoint(moved) {
		if time.Now().After(deadline) {
			t.Fatalf("the log has %s at %s; want its new address %s", moved, members(t, c, c.Leader())[moved].GetPeerAddress(), c.PeerEndpoint(moved))
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.AssertSameState()
}

// TestGossipGrowOneToFiveWhileWriting: a one-node cluster grows to three
// and then five by nodes that find it by gossip, while a client writes;
// every acknowledged write is readable on every node at the end, and no
// gap between two acknowledged writes is longer than an election or two.
func TestGossipGrowOneToFiveWhileWriting(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Size: 1, Gossip: true})
	cl, err := client.New(context.Background(), client.Config{Endpoints: []string{c.Endpoint("n1")}, LeaderRefresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, stop := context.WithCancel(context.Background())
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		acked   []string
		maxGap  time.Duration
		lastAck = time.Now()
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			key := fmt.Sprintf("w%d", i)
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := cl.Do(cctx, "test", key, []byte(key), func(context.Context) (client.Response, error) {
				return client.Response{Code: 200, Body: []byte("v" + key)}, nil
			})
			cancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, key)
				maxGap = max(maxGap, time.Since(lastAck))
				lastAck = time.Now()
				mu.Unlock()
			}
		}
	}()
	c.AddNode("n2", "n1")
	c.AddNode("n3", "n1")
	waitVoters(t, c, "n1", "n1", "n2", "n3")
	c.AddNode("n4", "n2")
	c.AddNode("n5", "n3")
	waitVoters(t, c, "n1", "n1", "n2", "n3", "n4", "n5")
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d writes acknowledged while growing; longest gap %s", len(acked), maxGap)
	if len(acked) < 20 {
		t.Fatalf("only %d writes acknowledged while growing", len(acked))
	}
	if maxGap > 3*time.Second {
		t.Errorf("writes stalled for %s while growing; want at most an election or two", maxGap)
	}
	for _, n := range c.Names {
		for _, key := range acked {
			got, err := c.Client(n).Get(ctxT(t, 10*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: key})
			if err != nil || string(got.GetRecord().GetResponse().GetBody()) != "v"+key {
				t.Fatalf("%s on %s: %v, %v; want the acknowledged write", key, n, got, err)
			}
		}
	}
	c.AssertSameState()
}

// TestGossipAnotherClusterCannotJoin: a node of another cluster pointed at
// this cluster's gossip is refused: its pool stays apart, and the cluster
// never lists it.
func TestGossipAnotherClusterCannotJoin(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Gossip: true})
	other := testcluster.Start(t, testcluster.Options{Size: 1, Gossip: true})
	stranger := other.Server("n1").Gossip()
	if _, err := stranger.Join([]string{c.Server("n1").Gossip().Addr()}); err == nil {
		t.Fatal("the other cluster's node merged into this cluster's gossip")
	}
	time.Sleep(time.Second)
	for _, n := range c.Names {
		// (Both clusters have a node named n1, and so of the same id.)
		for _, m := range c.Server(n).Gossip().Members() {
			if m.ClusterID != c.Server(n).ClusterID() {
				t.Fatalf("%s's gossip lists a node of cluster %x: %+v", n, m.ClusterID, m)
			}
		}
		if len(members(t, c, n)) != 3 {
			t.Fatalf("%s lists %d members", n, len(members(t, c, n)))
		}
	}
}

// TestBootstrapExpectFormsOneCluster: three nodes with empty data dirs,
// started at once with --bootstrap-expect 3 and each other's gossip
// addresses, form exactly one cluster of three voters; 20 times over.
func TestBootstrapExpectFormsOneCluster(t *testing.T) {
	rounds := 20
	if testing.Short() {
		rounds = 3
	}
	for r := range rounds {
		bootstrapExpectOnce(t, r)
	}
}

func bootstrapExpectOnce(t *testing.T, round int) {
	t.Helper()
	names := []string{"a", "b", "c"}
	gossip := map[string]string{}
	for _, n := range names {
		gossip[n] = testcluster.FreeAddr(t)
	}
	dir := t.TempDir()
	servers := make([]*server.Server, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		var seeds []string
		for _, m := range names {
			if m != n {
				seeds = append(seeds, gossip[m])
			}
		}
		cfg := server.Config{
			Name: n, DataDir: filepath.Join(dir, n),
			ClientAddr: testcluster.FreeAddr(t), PeerAddr: testcluster.FreeAddr(t),
			GossipAddr: gossip[n], GossipFast: true, Join: seeds, BootstrapExpect: 3,
			Raft: raftnode.Config{TickInterval: 20 * time.Millisecond},
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := server.New(cfg)
			if err == nil {
				err = s.Start()
			}
			servers[i], errs[i] = s, err
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("round %d: the three did not bootstrap within 30s", round)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			if s != nil {
				s.Stop(time.Second)
			}
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("round %d: %s: %v", round, names[i], err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		clusters, voters, leaders := map[uint64]bool{}, map[uint64]int{}, map[uint64]bool{}
		for _, s := range servers {
			st := s.Status()
			clusters[s.ClusterID()] = true
			for _, m := range s.RaftMembers() {
				if !m.Learner {
					voters[m.ID]++
				}
			}
			if st.Leader != 0 {
				leaders[st.Leader] = true
			}
		}
		if len(clusters) != 1 {
			t.Fatalf("round %d: the three nodes formed %d clusters", round, len(clusters))
		}
		if len(voters) == 3 && len(leaders) == 1 && voters[firstKey(voters)] == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("round %d: voters %v, leaders %v; want three voters in every node's view and one leader", round, voters, leaders)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range servers {
		s.Stop(time.Second)
	}
}

func firstKey(m map[uint64]int) uint64 {
	for k := range m {
		return k
	}
	return 0
}

// gauge returns the value of the gauge name with labels (a subset) that
// s's collectors export; -1 if there is none.
func gauge(t *testing.T, s *server.Server, name string, labels map[string]string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

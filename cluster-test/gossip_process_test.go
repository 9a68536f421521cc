package clustertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/cluster-test/harness"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// gnode is one keystored process with gossip, on loopback.
type gnode struct {
	name                 string
	dir, log             string
	client, peer, gossip string
	cmd                  *exec.Cmd
	done                 chan struct{} // closed once the process has been reaped
	conn                 *grpc.ClientConn
}

// newGNode picks n's addresses (the gossip one free for TCP and UDP) under
// root; start runs it with extra flags.
func newGNode(t *testing.T, root, name string) *gnode {
	t.Helper()
	g, err := harness.FreeGossipAddr()
	if err != nil {
		t.Fatal(err)
	}
	client, err := harness.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	peer, err := harness.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	n := &gnode{name: name, dir: filepath.Join(root, name), log: filepath.Join(root, name+".log"),
		client: client, peer: peer, gossip: g}
	conn, err := grpc.NewClient(n.client, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	n.conn = conn
	t.Cleanup(func() {
		n.kill()
		_ = conn.Close()
		if t.Failed() {
			b, _ := os.ReadFile(n.log)
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			t.Logf("last log lines of %s (%s):\n%s", n.name, n.log, strings.Join(lines[max(0, len(lines)-25):], "\n"))
		}
	})
	return n
}

// start runs n with its addresses, gossip on, and extra flags.
func (n *gnode) start(t *testing.T, bin string, extra ...string) {
	t.Helper()
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--name", n.name, "--data-dir", n.dir,
		"--client-addr", n.client, "--peer-addr", n.peer, "--gossip-addr", n.gossip,
		"--advertise-client-addr", n.client, "--advertise-peer-addr", n.peer}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	done := n.done
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(done) }()
}

// kill sends SIGKILL and waits until the process is gone.
func (n *gnode) kill() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.done
	n.cmd = nil
}

// exited reports whether n's process has ended by itself.
func (n *gnode) exited() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

func (n *gnode) kv() keystorev1.KeyStoreServiceClient {
	return keystorev1.NewKeyStoreServiceClient(n.conn)
}

func (n *gnode) memberList(timeout time.Duration) (*keystorev1.MemberListResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return keystorev1.NewClusterServiceClient(n.conn).MemberList(ctx, &keystorev1.MemberListRequest{})
}

func gossipAddrs(ns []*gnode, except *gnode) string {
	var out []string
	for _, n := range ns {
		if n != except {
			out = append(out, n.gossip)
		}
	}
	return strings.Join(out, ",")
}

// describe is a member list in one line: name(id) role gossip state.
func describe(resp *keystorev1.MemberListResponse) string {
	var parts []string
	for _, m := range resp.GetMembers() {
		s := fmt.Sprintf("%s(%s)", m.GetName(), m.GetId())
		if m.GetIsLearner() {
			s += " learner"
		}
		if m.GetIsLeader() {
			s += " leader"
		}
		parts = append(parts, s+" "+m.GetGossipState())
	}
	sort.Strings(parts)
	return fmt.Sprintf("cluster %s: %s", resp.GetClusterId(), strings.Join(parts, ", "))
}

// oneCluster checks that every node's member list shows the same cluster
// of exactly the nodes, all voters, with one leader all agree on; it
// returns the cluster id, or an error saying what is not so yet.
func oneCluster(ns []*gnode) (string, error) {
	var want []string
	for _, n := range ns {
		want = append(want, n.name)
	}
	slices.Sort(want)
	// Two clusters show as soon as two nodes answer, whatever the others.
	resps := make([]*keystorev1.MemberListResponse, len(ns))
	var errs []string
	first := -1
	for i, n := range ns {
		resp, err := n.memberList(time.Second)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", n.name, err))
			continue
		}
		resps[i] = resp
		switch {
		case resp.GetClusterId() == "":
		case first < 0:
			first = i
		case resp.GetClusterId() != resps[first].GetClusterId():
			return "", fmt.Errorf("TWO CLUSTERS: %s is in %s, %s in %s",
				ns[first].name, describe(resps[first]), n.name, describe(resp))
		}
	}
	if len(errs) > 0 {
		return "", errors.New(strings.Join(errs, "; "))
	}
	cluster, leader, ids := "", "", ""
	for i, n := range ns {
		resp := resps[i]
		var names, voterIDs, leaders []string
		for _, m := range resp.GetMembers() {
			names = append(names, m.GetName())
			if m.GetIsLearner() {
				return "", fmt.Errorf("%s lists %s as a learner (%s)", n.name, m.GetName(), describe(resp))
			}
			voterIDs = append(voterIDs, m.GetId())
			if m.GetIsLeader() {
				leaders = append(leaders, m.GetName())
			}
		}
		slices.Sort(names)
		slices.Sort(voterIDs)
		switch {
		case resp.GetClusterId() == "":
			return "", fmt.Errorf("%s reports no cluster id", n.name)
		case !slices.Equal(names, want):
			return "", fmt.Errorf("%s lists %v, want voters %v (%s)", n.name, names, want, describe(resp))
		case len(leaders) != 1:
			return "", fmt.Errorf("%s sees leaders %v (%s)", n.name, leaders, describe(resp))
		case ids != "" && strings.Join(voterIDs, ",") != ids:
			return "", fmt.Errorf("%s lists member ids %v, %s lists %s", n.name, voterIDs, ns[0].name, ids)
		case leader != "" && leaders[0] != leader:
			return "", fmt.Errorf("%s sees leader %s, %s sees %s", n.name, leaders[0], ns[0].name, leader)
		}
		cluster, leader, ids = resp.GetClusterId(), leaders[0], strings.Join(voterIDs, ",")
	}
	return cluster, nil
}

// bootstrapExpectRounds is how many rounds TestProcessBootstrapExpect makes
// (3 under -short).
const bootstrapExpectRounds = 20

// bootstrapExpectTick is the Raft tick of TestProcessBootstrapExpect's
// nodes: with the default 100 ms, the first election alone takes 1-2 s
// of a round's 2 s, and 20 rounds took 45 s; gossip keeps keystored's own
// timings (memberlist's LAN profile), which are what the test is about.
const bootstrapExpectTick = "50ms"

// TestProcessBootstrapExpect: three keystored processes with empty data
// dirs, started at once with --bootstrap-expect 3 and each other's gossip
// addresses as --join, form exactly one cluster: every node's member list
// shows the same cluster id and the three as voters with one leader, and
// a Claim succeeds. 20 rounds (3 under -short), each of new processes on
// new ports and data dirs.
func TestProcessBootstrapExpect(t *testing.T) {
	rounds := bootstrapExpectRounds
	if testing.Short() {
		rounds = 3
	}
	bin := buildKeystored(t)
	var took []time.Duration
	clusters := map[string]bool{}
	for r := range rounds {
		began := time.Now()
		cluster := bootstrapExpectRound(t, bin, r)
		if t.Failed() {
			return
		}
		if clusters[cluster] {
			t.Fatalf("round %d: cluster id %s was made in an earlier round too", r, cluster)
		}
		clusters[cluster] = true
		took = append(took, time.Since(began))
	}
	slices.Sort(took)
	t.Logf("%d rounds; start to one cluster with a leader and a Claim served: median %s, max %s",
		rounds, took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
}

// bootstrapExpectRound runs one round and returns the cluster's id; its
// processes are killed before it returns.
func bootstrapExpectRound(t *testing.T, bin string, round int) string {
	t.Helper()
	root := t.TempDir()
	var ns []*gnode
	for _, name := range []string{"n1", "n2", "n3"} {
		ns = append(ns, newGNode(t, root, name))
	}
	defer func() {
		for _, n := range ns {
			n.kill()
		}
	}()
	for _, n := range ns {
		n.start(t, bin, "--bootstrap-expect", "3", "--join", gossipAddrs(ns, n), "--raft-tick", bootstrapExpectTick)
	}
	var (
		cluster string
		err     error
	)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if cluster, err = oneCluster(ns); err == nil {
			break
		}
		if strings.HasPrefix(err.Error(), "TWO CLUSTERS") {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, n := range ns {
			if n.exited() {
				t.Fatalf("round %d: %s exited (log %s)", round, n.name, n.log)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("round %d: not one cluster of three voters and a leader 30 s after the start: %v", round, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	complete(t, ns[round%len(ns)].kv(), fmt.Sprintf("round-%d", round))
	return cluster
}

// TestProcessJoinByGossip: a node with an empty data dir, not named by
// --initial-cluster and given one member's gossip address as --join,
// joins a three-node cluster and becomes a voter; a node of another
// cluster pointed at the cluster's gossip never shows up in its member
// list, and the cluster keeps serving; gossip shows every member alive,
// and a follower killed with SIGKILL dead within 15 s, still a voter.
func TestProcessJoinByGossip(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildKeystored(t)
	root := t.TempDir()
	var ns []*gnode
	var parts []string
	for _, name := range []string{"n1", "n2", "n3"} {
		n := newGNode(t, root, name)
		ns = append(ns, n)
		parts = append(parts, name+"="+n.peer)
	}
	initial := strings.Join(parts, ",")
	for _, n := range ns {
		n.start(t, bin, "--initial-cluster", initial, "--join", gossipAddrs(ns, n))
	}
	waitFor(t, 30*time.Second, "the initial cluster", func() error { _, err := oneCluster(ns); return err })
	waitFor(t, 15*time.Second, "gossip to find the initial three alive", func() error { return allAlive(ns) })
	complete(t, ns[0].kv(), "initial")

	// The fourth joins through one member's gossip address.
	n4 := newGNode(t, root, "n4")
	began := time.Now()
	n4.start(t, bin, "--join", ns[1].gossip)
	ns = append(ns, n4)
	waitFor(t, 60*time.Second, "n4 to join as a voter", func() error {
		if n4.exited() {
			t.Fatalf("n4 exited (log %s)", n4.log)
		}
		_, err := oneCluster(ns)
		return err
	})
	t.Logf("n4 a voter %s after its start with --join %s", time.Since(began).Round(time.Millisecond), ns[1].gossip)
	assertReplayWithin(t, n4, "initial")
	complete(t, n4.kv(), "through-n4")
	waitFor(t, 15*time.Second, "gossip to find the four alive", func() error { return allAlive(ns) })
	before, err := ns[0].memberList(time.Second)
	if err != nil {
		t.Fatal(err)
	}

	// A node of another cluster: a single-node cluster of its own (its
	// own data; named n1 like a member of this one, so of the same Raft
	// id and gossip name), pointed at this cluster's gossip.
	stranger := newGNode(t, root, "n1")
	stranger.dir, stranger.log = filepath.Join(root, "stranger"), filepath.Join(root, "stranger.log")
	stranger.start(t, bin, "--initial-cluster", "n1="+stranger.peer, "--join", ns[0].gossip+","+ns[2].gossip)
	waitFor(t, 30*time.Second, "the stranger to serve its own cluster", func() error {
		if stranger.exited() {
			t.Fatalf("the stranger exited (log %s)", stranger.log)
		}
		_, err := oneCluster([]*gnode{stranger})
		return err
	})
	complete(t, stranger.kv(), "stranger")
	// Long enough for gossip to have merged several times over, were it
	// going to (a node alone gossips to its seeds again every 2 s).
	time.Sleep(6 * time.Second)
	own, err := stranger.memberList(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if own.GetClusterId() == before.GetClusterId() {
		t.Fatalf("the stranger is in cluster %s, the same as the cluster's", own.GetClusterId())
	}
	if len(own.GetMembers()) != 1 {
		t.Fatalf("the stranger lists %s; want itself alone", describe(own))
	}
	for _, n := range ns {
		resp, err := n.memberList(time.Second)
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		if resp.GetClusterId() != before.GetClusterId() || !sameMembers(resp, before) {
			t.Fatalf("%s lists %s after the stranger came; before it listed %s", n.name, describe(resp), describe(before))
		}
		for _, m := range resp.GetMembers() {
			if m.GetPeerAddress() == stranger.peer || m.GetClientAddress() == stranger.client {
				t.Fatalf("%s lists the stranger's address: %v", n.name, m)
			}
		}
	}
	if err := allAlive(ns); err != nil {
		t.Fatalf("after the stranger came: %v", err)
	}
	for _, n := range ns {
		complete(t, n.kv(), "after-stranger-"+n.name)
	}
	assertReplayWithin(t, stranger, "stranger")

	// SIGKILL of a follower: gossip finds it dead, Raft keeps it a voter.
	lead := leaderName(t, ns[0])
	var victim *gnode
	for _, n := range ns {
		if n.name != lead && victim == nil {
			victim = n
		}
	}
	var rest []*gnode
	for _, n := range ns {
		if n != victim {
			rest = append(rest, n)
		}
	}
	victim.kill()
	killed := time.Now()
	waitFor(t, 15*time.Second, victim.name+" to be reported dead by the others", func() error {
		for _, n := range rest {
			resp, err := n.memberList(time.Second)
			if err != nil {
				return fmt.Errorf("%s: %v", n.name, err)
			}
			if st := stateOf(resp, victim.name); st != "dead" {
				return fmt.Errorf("%s sees %s as %q (%s)", n.name, victim.name, st, describe(resp))
			}
		}
		return nil
	})
	t.Logf("%s reported dead by the other three %s after SIGKILL", victim.name, time.Since(killed).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // time in which anything automatic would have acted
	for _, n := range rest {
		resp, err := n.memberList(time.Second)
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		if !sameMembers(resp, before) {
			t.Fatalf("%s lists %s after %s died; want the same voters as before: %s", n.name, describe(resp), victim.name, describe(before))
		}
		complete(t, n.kv(), "after-kill-"+n.name)
	}
}

// waitFor polls cond until it returns nil, failing the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s: %v", limit, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// allAlive checks that every node's member list shows every member alive
// in gossip.
func allAlive(ns []*gnode) error {
	for _, n := range ns {
		resp, err := n.memberList(time.Second)
		if err != nil {
			return fmt.Errorf("%s: %v", n.name, err)
		}
		for _, m := range resp.GetMembers() {
			if m.GetGossipState() != "alive" {
				return fmt.Errorf("%s sees %s as %q (%s)", n.name, m.GetName(), m.GetGossipState(), describe(resp))
			}
		}
	}
	return nil
}

func stateOf(resp *keystorev1.MemberListResponse, name string) string {
	for _, m := range resp.GetMembers() {
		if m.GetName() == name {
			return m.GetGossipState()
		}
	}
	return "not a member"
}

// sameMembers reports whether a and b list the same voters (by name and
// id).
func sameMembers(a, b *keystorev1.MemberListResponse) bool {
	key := func(r *keystorev1.MemberListResponse) string {
		var out []string
		for _, m := range r.GetMembers() {
			out = append(out, fmt.Sprintf("%s/%s/%v", m.GetName(), m.GetId(), m.GetIsLearner()))
		}
		slices.Sort(out)
		return strings.Join(out, " ")
	}
	return key(a) == key(b)
}

func leaderName(t *testing.T, n *gnode) string {
	t.Helper()
	resp, err := n.memberList(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resp.GetMembers() {
		if m.GetIsLeader() {
			return m.GetName()
		}
	}
	t.Fatalf("%s knows no leader: %s", n.name, describe(resp))
	return ""
}

// assertReplayWithin waits until n serves the completed key (it may still
// be catching up), then checks the replay.
func assertReplayWithin(t *testing.T, n *gnode, key string) {
	t.Helper()
	waitFor(t, 20*time.Second, n.name+" to serve "+key, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := n.kv().Get(ctx, &keystorev1.GetRequest{Namespace: "e2e", Key: key})
		return err
	})
	assertReplay(t, n.kv(), key, &keystorev1.Response{Code: 200, Body: []byte("charged " + key)})
}

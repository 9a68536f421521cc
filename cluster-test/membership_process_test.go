package clustertest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/cluster-test/harness"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// Membership changes between real keystored processes (issue 19; the
// in-process versions are server/gossip_test.go, server/membership_test.go
// and raftnode/membership_test.go). Each test runs its own nodes (gnode,
// gossip on) on loopback, a writer that claims and completes fresh keys
// through the Go client, and checks at the end that every acknowledged
// completion replays its exact response.

// electionTicksForHandover is --raft-election-ticks of the tests that tell
// a handover from an election: at the default 100 ms tick the election
// timeout is electionTimeout (raft randomizes it in [timeout,
// 2*timeout)), and the followers of a leader that went silent campaign
// only after it, so a new leader serving within handoverBound can only
// have been handed over.
const (
	electionTicksForHandover = "20"
	electionTimeout          = 2 * time.Second
	handoverBound            = time.Second
)

// growGapBound is the longest the writer may go without an acknowledged
// write while the cluster grows: an election or two at the default
// timings (1-2 s each), as the in-process test allows.
const growGapBound = 3 * time.Second

// ackWriter claims and completes fresh keys, one after another, through a
// client.Client until stopped, and records each acknowledged completion
// and when it was acknowledged.
type ackWriter struct {
	cl    *client.Client
	ns    string
	began time.Time
	stopc context.CancelFunc
	done  chan struct{}

	mu      sync.Mutex
	keys    []string    // acknowledged, in order
	at      []time.Time // when each was acknowledged
	failed  int         // attempts that ended in an error
	lastErr error
	odd     []string // fresh keys a Claim did not find free: never expected
	ended   time.Time
}

// startWriter starts a writer in namespace ns through a client given
// endpoints (it discovers the other members).
func startWriter(t *testing.T, ns string, endpoints ...string) *ackWriter {
	t.Helper()
	cl, err := client.New(context.Background(), client.Config{Endpoints: endpoints, LeaderRefresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &ackWriter{cl: cl, ns: ns, began: time.Now(), stopc: cancel, done: make(chan struct{})}
	go w.run(ctx)
	t.Cleanup(func() { w.stop(); _ = cl.Close() })
	return w
}

// writerResponse is the response the writer stores for key.
func writerResponse(key string) client.Response {
	return client.Response{Code: 200, Body: []byte("done " + key)}
}

func (w *ackWriter) run(ctx context.Context) {
	defer close(w.done)
	for i := 0; ctx.Err() == nil; i++ {
		key := fmt.Sprintf("%s-%06d", w.ns, i)
		err := w.once(ctx, key)
		now := time.Now()
		w.mu.Lock()
		switch {
		case err == nil:
			w.keys = append(w.keys, key)
			w.at = append(w.at, now)
		case ctx.Err() == nil:
			w.failed++
			w.lastErr = err
		}
		w.mu.Unlock()
	}
}

func (w *ackWriter) once(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := w.cl.Claim(ctx, client.ClaimRequest{Namespace: w.ns, Key: key, Fingerprint: []byte(key)})
	if err != nil {
		return err
	}
	if res.Outcome != client.Acquired {
		w.mu.Lock()
		w.odd = append(w.odd, fmt.Sprintf("%s: %v", key, res.Outcome))
		w.mu.Unlock()
		return fmt.Errorf("claim of the fresh key %s: %v", key, res.Outcome)
	}
	_, err = w.cl.Complete(ctx, client.CompleteRequest{Namespace: w.ns, Key: key, Token: res.Token, Response: writerResponse(key)})
	return err
}

// stop stops the writer and waits for its last write (a no-op the second
// time).
func (w *ackWriter) stop() {
	w.stopc()
	<-w.done
	w.mu.Lock()
	if w.ended.IsZero() {
		w.ended = time.Now()
	}
	w.mu.Unlock()
}

// acks returns how many writes were acknowledged so far.
func (w *ackWriter) acks() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.keys)
}

// waitAcks waits until n more writes than now were acknowledged.
func (w *ackWriter) waitAcks(t *testing.T, n int, limit time.Duration) {
	t.Helper()
	want := w.acks() + n
	waitFor(t, limit, fmt.Sprintf("%d acknowledged writes", want), func() error {
		if got := w.acks(); got < want {
			w.mu.Lock()
			defer w.mu.Unlock()
			return fmt.Errorf("%d so far, %d failed (last: %v)", got, w.failed, w.lastErr)
		}
		return nil
	})
}

// longestGap is the longest time without an acknowledged write that
// overlaps [from, to] (to zero: until the writer stopped), and when that
// gap began.
func (w *ackWriter) longestGap(from, to time.Time) (gap time.Duration, began time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if to.IsZero() {
		to = w.ended
	}
	prev := w.began
	for i, at := range w.at {
		if !at.After(from) {
			prev = at
			continue
		}
		if at.After(to) {
			// The gap that ends with this write overlaps the window.
			if d := at.Sub(prev); d > gap {
				gap, began = d, prev
			}
			return gap, began
		}
		if d := at.Sub(prev); d > gap {
			gap, began = d, prev
		}
		prev = w.at[i]
	}
	if d := to.Sub(prev); d > gap {
		gap, began = d, prev
	}
	return gap, began
}

// summary is the writer's record in one line.
func (w *ackWriter) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%d writes acknowledged in %s, %d attempts failed (last: %v)",
		len(w.keys), w.ended.Sub(w.began).Round(time.Millisecond), w.failed, w.lastErr)
}

// verify checks every acknowledged write, after the writer stopped: a
// Claim of its key with its fingerprint, through the writer's client,
// replays exactly the response it stored, and every node of ns serves the
// same by a (linearizable) Get.
func (w *ackWriter) verify(t *testing.T, ns []*gnode) {
	t.Helper()
	w.stop()
	w.mu.Lock()
	keys := append([]string(nil), w.keys...)
	odd := append([]string(nil), w.odd...)
	w.mu.Unlock()
	if len(odd) > 0 {
		t.Errorf("Claims of fresh keys that did not acquire: %v", odd)
	}
	const workers = 8
	errs := make(chan string, workers)
	next := make(chan string)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var bad []string
			for key := range next {
				if len(bad) < 3 {
					if err := w.check(key, ns); err != nil {
						bad = append(bad, err.Error())
					}
				}
			}
			errs <- strings.Join(bad, "; ")
		}()
	}
	for _, k := range keys {
		next <- k
	}
	close(next)
	wg.Wait()
	close(errs)
	for e := range errs {
		if e != "" {
			t.Errorf("acknowledged writes lost or changed: %s", e)
		}
	}
}

// check checks one acknowledged key (see verify).
func (w *ackWriter) check(key string, ns []*gnode) error {
	want := writerResponse(key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := w.cl.Claim(ctx, client.ClaimRequest{Namespace: w.ns, Key: key, Fingerprint: []byte(key)})
	if err != nil {
		return fmt.Errorf("replay of %s: %v", key, err)
	}
	if res.Outcome != client.Completed || res.Record == nil || res.Record.Response == nil ||
		res.Record.Response.Code != want.Code || !bytes.Equal(res.Record.Response.Body, want.Body) {
		return fmt.Errorf("replay of %s: %v %+v; want COMPLETED with %q", key, res.Outcome, res.Record, want.Body)
	}
	for _, n := range ns {
		got, err := n.kv().Get(ctx, &keystorev1.GetRequest{Namespace: w.ns, Key: key})
		if err != nil {
			return fmt.Errorf("get %s on %s: %v", key, n.name, err)
		}
		r := got.GetRecord().GetResponse()
		if got.GetRecord().GetState() != keystorev1.RecordState_RECORD_STATE_COMPLETED || r.GetCode() != want.Code || !bytes.Equal(r.GetBody(), want.Body) {
			return fmt.Errorf("get %s on %s: %v; want COMPLETED with %q", key, n.name, got.GetRecord(), want.Body)
		}
	}
	return nil
}

// waitOneCluster waits until ns form one cluster of exactly them, all
// voters, with a leader they agree on, failing at once if one exits.
func waitOneCluster(t *testing.T, limit time.Duration, what string, ns []*gnode) {
	t.Helper()
	waitFor(t, limit, what, func() error {
		for _, n := range ns {
			if n.exited() {
				t.Fatalf("%s exited while waiting for %s (log %s)", n.name, what, n.log)
			}
		}
		_, err := oneCluster(ns)
		return err
	})
}

// signalExit sends sig to n (none if sig is 0) and waits up to limit for
// its process to end; it returns the exit status (-1 for a death by
// signal), or fails the test.
func signalExit(t *testing.T, n *gnode, sig syscall.Signal, limit time.Duration) int {
	t.Helper()
	if sig != 0 {
		if err := n.cmd.Process.Signal(sig); err != nil {
			t.Fatalf("signal %v to %s: %v", sig, n.name, err)
		}
	}
	select {
	case <-n.done:
	case <-time.After(limit):
		t.Fatalf("%s still runs after %s (signal %d; log %s)", n.name, limit, sig, n.log)
	}
	return n.cmd.ProcessState.ExitCode()
}

// startThree starts n1-n3 as one cluster (--initial-cluster, each with
// the others' gossip addresses as --join) with extra flags (nodeArgs, if
// set, adds each node's own) and waits until they form it and gossip
// finds them all alive.
func startThree(t *testing.T, bin, root string, nodeArgs func(*gnode) []string, extra ...string) []*gnode {
	t.Helper()
	var ns []*gnode
	var parts []string
	for _, name := range []string{"n1", "n2", "n3"} {
		n := newGNode(t, root, name)
		ns = append(ns, n)
		parts = append(parts, name+"="+n.peer)
	}
	for _, n := range ns {
		args := append([]string{"--initial-cluster", strings.Join(parts, ","), "--join", gossipAddrs(ns, n)}, extra...)
		if nodeArgs != nil {
			args = append(args, nodeArgs(n)...)
		}
		n.start(t, bin, args...)
	}
	waitOneCluster(t, 30*time.Second, "the initial cluster", ns)
	waitFor(t, 15*time.Second, "gossip to find the three alive", func() error { return allAlive(ns) })
	return ns
}

// memberByName returns the member named name in n's member list.
func memberByName(t *testing.T, n *gnode, name string) *keystorev1.Member {
	t.Helper()
	resp, err := n.memberList(time.Second)
	if err != nil {
		t.Fatalf("member list of %s: %v", n.name, err)
	}
	for _, m := range resp.GetMembers() {
		if m.GetName() == name {
			return m
		}
	}
	t.Fatalf("%s does not list %s: %s", n.name, name, describe(resp))
	return nil
}

// leaderOf is the name of the member resp shows leading, or "".
func leaderOf(resp *keystorev1.MemberListResponse) string {
	for _, m := range resp.GetMembers() {
		if m.GetIsLeader() {
			return m.GetName()
		}
	}
	return ""
}

// byName returns the node of ns named name.
func byName(ns []*gnode, name string) *gnode {
	for _, n := range ns {
		if n.name == name {
			return n
		}
	}
	return nil
}

func without(ns []*gnode, x *gnode) []*gnode {
	var out []*gnode
	for _, n := range ns {
		if n != x {
			out = append(out, n)
		}
	}
	return out
}

func addrsOf(ns []*gnode) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.client)
	}
	return out
}

// TestProcessGrowOneToFiveWhileWriting: one keystored grows to three and
// then five by nodes started with --join of one member's gossip address
// (n2 and n3 through n1's, at once; n4 and n5 through n2's, at once),
// while a client claims and completes fresh keys; every node ends a
// voter, every acknowledged completion replays its exact response (Claim
// with its fingerprint) and every node serves it (Get), and the writes
// never stall longer than growGapBound.
func TestProcessGrowOneToFiveWhileWriting(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildKeystored(t)
	root := t.TempDir()
	n1 := newGNode(t, root, "n1")
	n1.start(t, bin) // no --initial-cluster, no --join: a cluster of itself
	ns := []*gnode{n1}
	waitOneCluster(t, 20*time.Second, "n1 to lead a cluster of itself", ns)
	w := startWriter(t, "grow", n1.client)
	w.waitAcks(t, 20, 10*time.Second)

	grow := func(seed *gnode, names ...string) {
		began := time.Now()
		for _, name := range names {
			n := newGNode(t, root, name)
			n.start(t, bin, "--join", seed.gossip)
			ns = append(ns, n)
		}
		waitOneCluster(t, 40*time.Second, fmt.Sprintf("%d voters", len(ns)), ns)
		gap, _ := w.longestGap(began, time.Now())
		t.Logf("%s voters %s after their start with --join %s (%s's gossip); longest write gap meanwhile %s",
			strings.Join(names, ", "), time.Since(began).Round(time.Millisecond), seed.gossip, seed.name, gap.Round(time.Millisecond))
	}
	grown := time.Now()
	grow(n1, "n2", "n3")
	w.waitAcks(t, 20, 10*time.Second)
	grow(ns[1], "n4", "n5")
	w.waitAcks(t, 20, 10*time.Second)
	w.stop()
	gap, at := w.longestGap(grown, time.Time{})
	t.Logf("%s; longest gap from the first join on: %s, from %s after it", w.summary(), gap.Round(time.Millisecond), at.Sub(grown).Round(time.Millisecond))
	if gap > growGapBound {
		t.Errorf("no write acknowledged for %s while growing; want at most %s", gap.Round(time.Millisecond), growGapBound)
	}
	checked := time.Now()
	w.verify(t, ns)
	t.Logf("%d acknowledged writes checked on the five nodes in %s", w.acks(), time.Since(checked).Round(time.Millisecond))
}

// TestProcessRemoveLeader: MemberRemove of the leader's id, asked of the
// leader itself, hands leadership over before the removal: a survivor
// that knows a new leader serves a write within handoverBound of the
// call, and the client's writes never pause as long as electionTimeout,
// the least an election would take here (--raft-election-ticks 20). The
// call succeeds; the two left list each other alone as voters and serve,
// with no acknowledged write lost; the removed process exits with status
// 0 by itself.
func TestProcessRemoveLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildKeystored(t)
	ns := startThree(t, bin, t.TempDir(), nil, "--raft-election-ticks", electionTicksForHandover)
	w := startWriter(t, "remove", addrsOf(ns)...)
	w.waitAcks(t, 50, 10*time.Second)

	lead := byName(ns, leaderName(t, ns[0]))
	rest := without(ns, lead)
	id := memberByName(t, rest[0], lead.name).GetId()
	removed := make(chan error, 1)
	began := time.Now()
	var took time.Duration
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_, err := keystorev1.NewClusterServiceClient(lead.conn).MemberRemove(ctx, &keystorev1.MemberRemoveRequest{Id: id})
		took = time.Since(began)
		removed <- err
	}()
	served, servedBy, probeKey := writeUnderNewLeader(t, lead, rest, began)
	if err := <-removed; err != nil {
		t.Fatalf("MemberRemove of the leader %s (id %s) through itself, after %s: %v", lead.name, id, took.Round(time.Millisecond), err)
	}
	newLead := leaderName(t, rest[0])
	waitOneCluster(t, 10*time.Second, "the two left as the cluster", rest)
	w.waitAcks(t, 50, 10*time.Second)
	w.stop()
	gap, _ := w.longestGap(began, time.Time{})
	t.Logf("removal of the leader %s: a write served under a new leader by %s %s after the call began; the call returned after %s; new leader %s; the client's longest write gap from the call on %s; %s",
		lead.name, servedBy, served.Round(time.Millisecond), took.Round(time.Millisecond), newLead, gap.Round(time.Millisecond), w.summary())
	if served > handoverBound {
		t.Errorf("the first write under a new leader was served %s after the removal of the leader began; want under %s (an election takes %s or more here)",
			served.Round(time.Millisecond), handoverBound, electionTimeout)
	}
	if gap >= electionTimeout {
		t.Errorf("no write acknowledged for %s around the leader's removal; want less than an election takes here, %s", gap.Round(time.Millisecond), electionTimeout)
	}
	assertProbe(t, rest, probeKey)
	w.verify(t, rest)
	// The removed leader may never hear its removal commit (the new
	// leader stops replicating to it as it applies it), but it asked for
	// it: it stops once the new leader answers, instead of forwarding
	// writes until it finds out by asking its peers (raftnode's
	// removalLoop, some 2-3 election timeouts after it has known no
	// leader, in steps of 2: 8 s or more here).
	code := signalExit(t, lead, 0, 40*time.Second)
	exited := time.Since(began)
	t.Logf("%s exited %d, %s after its removal began", lead.name, code, exited.Round(time.Millisecond))
	if exited > took+6*time.Second {
		t.Errorf("the removed leader exited %s after its removal was answered; want it to stop at the answer (within its shutdown grace)", (exited - took).Round(time.Millisecond))
	}
	if code != 0 {
		t.Errorf("the removed leader %s exited with status %d; want 0", lead.name, code)
	}
}

// TestProcessSigtermLeaderHandsOver: SIGTERM of the leader hands
// leadership over before it stops: a survivor that knows a new leader
// serves a write (Claim and Complete of a fresh key, straight to the
// survivors) within handoverBound of the signal, and the client's writes
// never pause as long as electionTimeout, the least an election would
// take here (--raft-election-ticks 20); the old leader exits 0, and no
// acknowledged write is lost.
func TestProcessSigtermLeaderHandsOver(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildKeystored(t)
	ns := startThree(t, bin, t.TempDir(), nil, "--raft-election-ticks", electionTicksForHandover)
	w := startWriter(t, "sigterm", addrsOf(ns)...)
	w.waitAcks(t, 50, 10*time.Second)

	lead := byName(ns, leaderName(t, ns[0]))
	rest := without(ns, lead)
	began := time.Now()
	if err := lead.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	served, servedBy, probeKey := writeUnderNewLeader(t, lead, rest, began)
	newLead := leaderName(t, rest[0])
	code := signalExit(t, lead, 0, 15*time.Second)
	stopped := time.Since(began)
	w.waitAcks(t, 50, 10*time.Second)
	w.stop()
	gap, _ := w.longestGap(began, time.Time{})
	t.Logf("SIGTERM of the leader %s: a write served under a new leader by %s %s later (new leader %s); %s exited %d after %s; the client's longest write gap from the signal on %s; %s",
		lead.name, servedBy, served.Round(time.Millisecond), newLead, lead.name, code, stopped.Round(time.Millisecond), gap.Round(time.Millisecond), w.summary())
	if served > handoverBound {
		t.Errorf("the first write under a new leader was served %s after SIGTERM of the leader; want under %s (an election takes %s or more here)",
			served.Round(time.Millisecond), handoverBound, electionTimeout)
	}
	if code != 0 {
		t.Errorf("the leader exited with status %d after SIGTERM; want 0", code)
	}
	if gap >= electionTimeout {
		t.Errorf("the client's writes paused %s after SIGTERM of the leader; want less than an election takes here, %s", gap.Round(time.Millisecond), electionTimeout)
	}
	assertProbe(t, rest, probeKey)
	w.verify(t, rest)
}

// writeUnderNewLeader writes straight to the survivors rest, alternating,
// each attempt short, until one that knows a leader among them (asked
// before the write: a write old committed before it handed over does not
// count) acknowledges a Claim and Complete of a fresh key; it returns how
// long after began, which survivor, and the key.
func writeUnderNewLeader(t *testing.T, old *gnode, rest []*gnode, began time.Time) (time.Duration, string, string) {
	t.Helper()
	var lastErr error
	for i := 0; ; i++ {
		if time.Since(began) > 10*time.Second {
			t.Fatalf("no survivor served a write under a new leader 10 s after the leader %s was asked to go: %v", old.name, lastErr)
		}
		n := rest[i%len(rest)]
		if resp, err := n.memberList(250 * time.Millisecond); err != nil {
			lastErr = err
			continue
		} else if l := leaderOf(resp); byName(rest, l) == nil {
			lastErr = fmt.Errorf("%s sees leader %q", n.name, l)
			continue
		}
		key := fmt.Sprintf("probe-%d", i)
		ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
		cl, err := n.kv().Claim(ctx, &keystorev1.ClaimRequest{Namespace: "e2e", Key: key})
		if err == nil && cl.GetOutcome() == keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
			_, err = n.kv().Complete(ctx, &keystorev1.CompleteRequest{Namespace: "e2e", Key: key, Token: cl.GetToken(), Response: probeResponse(key)})
		} else if err == nil {
			err = fmt.Errorf("claim of a fresh key: %v", cl.GetOutcome())
		}
		cancel()
		if err == nil {
			return time.Since(began), n.name, key
		}
		lastErr = err
	}
}

// probeResponse is the response complete stores for key.
func probeResponse(key string) *keystorev1.Response {
	return &keystorev1.Response{Code: 200, Body: []byte("charged " + key)}
}

// assertProbe checks that every node of ns replays the write of key that
// writeUnderNewLeader or complete made.
func assertProbe(t *testing.T, ns []*gnode, key string) {
	t.Helper()
	for _, n := range ns {
		assertReplay(t, n.kv(), key, probeResponse(key))
	}
}

// TestProcessGossipCutNodeStaysVoter: a follower cut off from gossip, and
// from gossip alone, stays a voter. The cut: every node runs with a
// gossip key (--gossip-key-file, a file of its own); the follower's file
// is rewritten with another key and the follower sent SIGHUP (it rereads
// the file, as in a key rotation), so that from then on it and the others
// cannot read each other's gossip, TCP or UDP, either way, while its
// process and its Raft links run on untouched. Writing the shared key back
// and SIGHUP again heals it. (The fault proxies carry TCP only, and
// memberlist probes and gossips over UDP; SIGSTOP would stop Raft too.)
//
// Asserted: the other two find it dead in gossip (member list, and the
// leader's keystore_member_gossip_state metric); 2 s later (time for
// anything automatic to act) every node, the cut one included, lists the
// same three voters as before (and the leader's keystore_member_role says
// voter); writes through the cut node itself and through the leader
// commit, and the client's never pause longer than growGapBound; after
// the heal every node finds every member alive again; no acknowledged
// write is lost.
func TestProcessGossipCutNodeStaysVoter(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildKeystored(t)
	root := t.TempDir()
	shared, other := gossipKey(t), gossipKey(t)
	metrics := map[string]string{}
	keyFile := func(n *gnode) string { return filepath.Join(root, n.name+".gossip-key") }
	ns := startThree(t, bin, root, func(n *gnode) []string {
		writeKey(t, keyFile(n), shared)
		addr, err := harness.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		metrics[n.name] = addr
		return []string{"--gossip-key-file", keyFile(n), "--metrics-addr", addr}
	})
	w := startWriter(t, "gossipcut", addrsOf(ns)...)
	w.waitAcks(t, 50, 10*time.Second)
	before, err := ns[0].memberList(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lead := byName(ns, leaderName(t, ns[0]))
	var cut *gnode
	for _, n := range ns {
		if n != lead && cut == nil {
			cut = n
		}
	}
	rest := without(ns, cut)

	writeKey(t, keyFile(cut), other)
	if err := cut.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	waitFor(t, 30*time.Second, cut.name+" to be found dead in gossip by the others", func() error {
		return seenAs(rest, cut.name, "dead")
	})
	detected := time.Since(began)
	// The cut node finds the others dead too (gossip is cut both ways).
	waitFor(t, 30*time.Second, cut.name+" to find the others dead in gossip", func() error {
		for _, n := range rest {
			if err := seenAs([]*gnode{cut}, n.name, "dead"); err != nil {
				return err
			}
		}
		return nil
	})
	time.Sleep(2 * time.Second) // time in which anything automatic would have acted
	for _, n := range ns {
		resp, err := n.memberList(time.Second)
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		if !sameMembers(resp, before) {
			t.Fatalf("%s lists %s with %s cut off from gossip; before it, %s", n.name, describe(resp), cut.name, describe(before))
		}
	}
	leadNow := byName(ns, leaderName(t, rest[0]))
	for _, want := range []string{
		fmt.Sprintf(`keystore_member_gossip_state{id=%q,member=%q,state="dead"} 1`, memberByName(t, leadNow, cut.name).GetId(), cut.name),
		fmt.Sprintf(`keystore_member_role{id=%q,member=%q,role="voter"} 1`, memberByName(t, leadNow, cut.name).GetId(), cut.name),
	} {
		if err := hasMetric(metrics[leadNow.name], want); err != nil {
			t.Errorf("the leader %s's metrics: %v", leadNow.name, err)
		}
	}
	complete(t, cut.kv(), "through-the-cut-node")
	complete(t, leadNow.kv(), "through-the-leader-while-cut")
	assertProbe(t, ns, "through-the-cut-node")
	assertProbe(t, ns, "through-the-leader-while-cut")
	w.waitAcks(t, 50, 10*time.Second)

	writeKey(t, keyFile(cut), shared)
	if err := cut.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	waitFor(t, 30*time.Second, "gossip to find every member alive after the heal", func() error { return allAlive(ns) })
	alive := time.Since(healed)
	w.waitAcks(t, 50, 10*time.Second)
	w.stop()
	gap, _ := w.longestGap(began, time.Time{})
	t.Logf("%s cut off from gossip: found dead by the others %s after the cut; alive again everywhere %s after the heal; longest write gap from the cut on %s; %s",
		cut.name, detected.Round(time.Millisecond), alive.Round(time.Millisecond), gap.Round(time.Millisecond), w.summary())
	if gap > growGapBound {
		t.Errorf("no write acknowledged for %s with %s cut off from gossip; want at most %s", gap.Round(time.Millisecond), cut.name, growGapBound)
	}
	if _, err := oneCluster(ns); err != nil {
		t.Errorf("after the heal: %v", err)
	}
	w.verify(t, ns)
}

// seenAs checks that every node of ns sees member name in gossip state
// want.
func seenAs(ns []*gnode, name, want string) error {
	for _, n := range ns {
		resp, err := n.memberList(time.Second)
		if err != nil {
			return fmt.Errorf("%s: %v", n.name, err)
		}
		if st := stateOf(resp, name); st != want {
			return fmt.Errorf("%s sees %s as %q (%s)", n.name, name, st, describe(resp))
		}
	}
	return nil
}

// gossipKey returns a new random gossip key, base64 as the key file wants.
func gossipKey(t *testing.T) string {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(k)
}

// writeKey replaces the key file path by one holding key alone (by a
// rename, so that keystored never reads half a file).
func writeKey(t *testing.T, path, key string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// hasMetric checks that the metrics served at addr hold the line want
// (a sample in Prometheus's text format, labels sorted by name).
func hasMetric(addr, want string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	name, _, _ := strings.Cut(want, "{")
	var same []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == want {
			return nil
		}
		if strings.HasPrefix(line, name+"{") {
			same = append(same, line)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return fmt.Errorf("no sample %s; %s has: %s", want, name, strings.Join(same, " | "))
}

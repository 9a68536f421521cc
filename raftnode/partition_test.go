package raftnode

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Whole clusters of Nodes in one process, on an InmemNetwork, over memSM
// and snapLog: partitions (symmetric, one-way, minority), lossy links, a
// storage failure, a restart and a snapshot catch-up.

// snapLog is a memLog whose snapshots travel: raft's Snapshot is the state
// as applied now, OpenSnapshot streams its log time (8 bytes LE, what
// memLog.ApplySnapshot reads from a snapshot's data), ReceiveSnapshot
// stages the stream, and ApplySnapshot installs what was staged for the
// snapshot's metadata, as storage.Store does. Membership never changes in
// these tests: every snapshot's ConfState is cs.
type snapLog struct {
	*memLog
	cs raftpb.ConfState

	stageMu sync.Mutex
	staged  map[[2]uint64][]byte // by index and term
}

func newSnapLog(sm *memSM, voters []uint64) *snapLog {
	return &snapLog{memLog: newMemLog(sm), cs: raftpb.ConfState{Voters: voters}, staged: make(map[[2]uint64][]byte)}
}

// applied returns the state machine's applied index, its term and log
// time, consistently.
func (l *snapLog) applied() (raftpb.SnapshotMetadata, int64, error) {
	l.sm.mu.Lock()
	index, logTime := l.sm.applied, l.sm.logTime
	l.sm.mu.Unlock()
	if index == 0 {
		return raftpb.SnapshotMetadata{}, 0, raft.ErrSnapshotTemporarilyUnavailable
	}
	term, err := l.memLog.Term(index)
	if err != nil {
		return raftpb.SnapshotMetadata{}, 0, err
	}
	return raftpb.SnapshotMetadata{Index: index, Term: term, ConfState: l.cs}, logTime, nil
}

// InitialState gives a restarting node its membership (memLog keeps
// none: storage.Store persists what Apply is handed).
func (l *snapLog) InitialState() (raftpb.HardState, raftpb.ConfState, error) {
	hs, cs, err := l.memLog.InitialState()
	if err == nil && !raft.IsEmptyHardState(hs) {
		cs = l.cs
	}
	return hs, cs, err
}

func (l *snapLog) Snapshot() (raftpb.Snapshot, error) {
	md, _, err := l.applied()
	return raftpb.Snapshot{Metadata: md}, err
}

func (l *snapLog) OpenSnapshot() (raftpb.SnapshotMetadata, io.ReadCloser, error) {
	md, logTime, err := l.applied()
	if err != nil {
		return md, nil, err
	}
	r, w := io.Pipe()
	go func() {
		_, err := w.Write(binary.LittleEndian.AppendUint64(nil, uint64(logTime)))
		_ = w.CloseWithError(err)
	}()
	return md, r, nil
}

func (l *snapLog) ReceiveSnapshot(md raftpb.SnapshotMetadata, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(b) != 8 {
		return fmt.Errorf("snapshot of %d bytes; want 8", len(b))
	}
	l.stageMu.Lock()
	defer l.stageMu.Unlock()
	l.staged[[2]uint64{md.Index, md.Term}] = b
	return nil
}

func (l *snapLog) ApplySnapshot(snap raftpb.Snapshot) error {
	md := snap.Metadata
	l.stageMu.Lock()
	data, ok := l.staged[[2]uint64{md.Index, md.Term}]
	clear(l.staged)
	l.stageMu.Unlock()
	if !ok {
		return fmt.Errorf("no snapshot staged at index %d term %d", md.Index, md.Term)
	}
	snap.Data = data
	return l.memLog.ApplySnapshot(snap)
}

// inmemCluster is a cluster of Nodes (ids 1..n) on one InmemNetwork.
type inmemCluster struct {
	t    *testing.T
	nw   *InmemNetwork
	ids  []uint64
	cfgs map[uint64]Config
	logs map[uint64]*snapLog
	sms  map[uint64]*memSM

	mu    sync.Mutex
	nodes map[uint64]*Node // replaced by restart
}

// startInmemCluster starts size nodes with short timeouts (tweak adjusts
// their Config) and watches that no two ever lead in one term; all stop
// when the test ends.
func startInmemCluster(t *testing.T, size int, tweak func(*Config)) *inmemCluster {
	t.Helper()
	c := &inmemCluster{t: t, nw: NewInmemNetwork(1), cfgs: make(map[uint64]Config), logs: make(map[uint64]*snapLog),
		sms: make(map[uint64]*memSM), nodes: make(map[uint64]*Node)}
	peers := memPeers(size)
	for id := uint64(1); id <= uint64(size); id++ {
		c.ids = append(c.ids, id)
	}
	for _, id := range c.ids {
		cfg := Config{ID: id, Peers: peers, TickInterval: 5 * time.Millisecond, ElectionTicks: 10, IdleTickInterval: -1}
		if tweak != nil {
			tweak(&cfg)
		}
		c.cfgs[id] = cfg
		c.sms[id] = &memSM{}
		c.logs[id] = newSnapLog(c.sms[id], c.ids)
		c.start(id)
	}
	c.watchLeaders()
	return c
}

// start starts node id over its log and state machine, on a new
// transport.
func (c *inmemCluster) start(id uint64) {
	c.t.Helper()
	cfg := c.cfgs[id]
	cfg.Transport = c.nw.Transport(id)
	n, err := New(cfg, c.logs[id], c.sms[id])
	if err != nil {
		c.t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(n.Stop)
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
}

// restart stops node id and starts it again over the same log and state
// machine, as a process restart with its disk would.
func (c *inmemCluster) restart(id uint64) {
	c.t.Helper()
	c.node(id).Stop()
	c.start(id)
}

func (c *inmemCluster) node(id uint64) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// watchLeaders checks, until the test ends, that the nodes never disagree
// on who leads a term: raft's election safety, at most one leader per
// term, seen through every node's Status (a node's leader in its term).
func (c *inmemCluster) watchLeaders() {
	stop, done := make(chan struct{}), make(chan struct{})
	var violations []string
	go func() {
		defer close(done)
		tick := time.NewTicker(500 * time.Microsecond)
		defer tick.Stop()
		leaders := make(map[uint64]uint64) // term → leader
		for {
			c.mu.Lock()
			ids := slices.Clone(c.ids)
			c.mu.Unlock()
			for _, id := range ids {
				st := c.node(id).Status()
				if st.Leader == 0 {
					continue
				}
				if l, ok := leaders[st.Term]; !ok {
					leaders[st.Term] = st.Leader
				} else if l != st.Leader && len(violations) < 10 {
					violations = append(violations, fmt.Sprintf("node %d sees %d lead term %d, which %d led", id, st.Leader, st.Term, l))
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	c.t.Cleanup(func() {
		close(stop)
		<-done
		for _, v := range violations {
			c.t.Errorf("two leaders in one term: %s", v)
		}
	})
}

// waitLeader waits until the nodes among agree that one of them leads,
// and returns it and its term.
func (c *inmemCluster) waitLeader(among ...uint64) (lead, term uint64) {
	c.t.Helper()
	if len(among) == 0 {
		among = c.ids
	}
	waitFor(c.t, fmt.Sprintf("a leader among %v", among), func() bool {
		lead = c.node(among[0]).Status().Leader
		if !slices.Contains(among, lead) {
			return false
		}
		term = c.node(lead).Status().Term
		for _, id := range among {
			if st := c.node(id).Status(); st.Leader != lead || st.Term != term {
				return false
			}
		}
		return true
	})
	return lead, term
}

// propose proposes cmd on node id, waiting at most timeout.
func (c *inmemCluster) propose(id uint64, timeout time.Duration, cmd string) (*statev1.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.node(id).Propose(ctx, 0, []byte(cmd))
}

// read asks node id for a linearizable read, waiting at most timeout.
func (c *inmemCluster) read(id uint64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.node(id).ReadIndex(ctx)
}

// mustPropose proposes cmd on node id and fails the test if it does not
// apply within 5s.
func (c *inmemCluster) mustPropose(id uint64, cmd string) {
	c.t.Helper()
	if _, err := c.propose(id, 5*time.Second, cmd); err != nil {
		c.t.Fatalf("propose %q on node %d: %v", cmd, id, err)
	}
}

// waitConverged waits until the nodes among have applied the same index,
// at least atLeast, and all they know to be committed.
func (c *inmemCluster) waitConverged(atLeast uint64, among ...uint64) uint64 {
	c.t.Helper()
	var applied uint64
	waitFor(c.t, fmt.Sprintf("nodes %v applying the same index (at least %d)", among, atLeast), func() bool {
		applied = c.node(among[0]).Status().Applied
		if applied < atLeast {
			return false
		}
		for _, id := range among {
			if st := c.node(id).Status(); st.Applied != applied || st.Commit != applied {
				return false
			}
		}
		return true
	})
	return applied
}

func (c *inmemCluster) others(ids ...uint64) []uint64 {
	var out []uint64
	for _, id := range c.ids {
		if !slices.Contains(ids, id) {
			out = append(out, id)
		}
	}
	return out
}

// TestPartitionClusterElectsOneLeaderAndForwards: three nodes elect one
// leader; a proposal on a follower is forwarded, applied under its
// request id, and applied on the follower too by the time it returns.
func TestPartitionClusterElectsOneLeaderAndForwards(t *testing.T) {
	c := startInmemCluster(t, 3, nil)
	lead, _ := c.waitLeader()
	c.mustPropose(lead, "on the leader")
	follower := c.others(lead)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.node(follower).Propose(ctx, 12345, []byte("forwarded"))
	if err != nil {
		t.Fatalf("propose on follower %d: %v", follower, err)
	}
	if res.GetRequestId() != 12345 {
		t.Errorf("result for request %d; want 12345", res.GetRequestId())
	}
	if f, l := c.node(follower).Status().Applied, c.node(lead).Status().Applied; f < l {
		t.Errorf("follower applied %d when its forwarded proposal returned, the leader %d; want it caught up", f, l)
	}
	c.waitConverged(0, c.ids...)
}

// TestPartitionIsolatedLeaderIsReplaced: cut off, a leader's proposals
// time out while the majority elects a leader at a higher term and goes
// on; healed, the old leader follows the new one and every log converges
// (its uncommitted entry is dropped).
func TestPartitionIsolatedLeaderIsReplaced(t *testing.T) {
	c := startInmemCluster(t, 3, nil)
	old, oldTerm := c.waitLeader()
	c.mustPropose(old, "before")

	c.nw.Isolate(old)
	// At once, while it may still believe it leads: the entry goes into
	// its log and never commits.
	if _, err := c.propose(old, 100*time.Millisecond, "on the isolated leader"); !errors.Is(err, ErrTimeout) {
		t.Errorf("propose on the isolated leader: got %v; want ErrTimeout", err)
	}
	majority := c.others(old)
	lead, term := c.waitLeader(majority...)
	if term <= oldTerm {
		t.Errorf("new leader %d at term %d; want a term above %d", lead, term, oldTerm)
	}
	c.mustPropose(lead, "on the new leader")
	for _, id := range majority {
		c.mustPropose(id, fmt.Sprintf("on %d in the majority", id))
	}
	if _, err := c.propose(old, 100*time.Millisecond, "on the old leader, still cut off"); !errors.Is(err, ErrTimeout) {
		t.Errorf("propose on the old leader: got %v; want ErrTimeout", err)
	}
	// Linearizable reads: none on the old leader, which cannot have seen
	// the majority's writes; on the majority, they see them.
	if err := c.read(old, 100*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Errorf("read on the old leader: got %v; want ErrTimeout", err)
	}
	written := c.node(lead).Status().Applied
	for _, id := range majority {
		if err := c.read(id, 5*time.Second); err != nil {
			t.Errorf("read on node %d in the majority: %v", id, err)
		} else if got := c.node(id).Status().Applied; got < written {
			t.Errorf("read on node %d in the majority returned at applied %d; want at least %d", id, got, written)
		}
	}

	c.nw.Heal()
	if got, gotTerm := c.waitLeader(); got != lead || gotTerm != term {
		t.Errorf("after heal node %d leads at term %d; want %d at %d", got, gotTerm, lead, term)
	}
	applied := c.waitConverged(c.node(lead).Status().Applied, c.ids...)
	c.mustPropose(old, "after heal")
	c.waitConverged(applied+1, c.ids...)
	if err := c.read(old, 5*time.Second); err != nil {
		t.Errorf("read on the old leader after heal: %v", err)
	}
}

// TestPartitionRejoiningFollowerDoesNotDisrupt: a follower cut off long
// enough to time out elections, then healed, does not depose the leader
// (PreVote, CheckQuorum): the term stays, and it catches up.
func TestPartitionRejoiningFollowerDoesNotDisrupt(t *testing.T) {
	c := startInmemCluster(t, 3, nil)
	lead, term := c.waitLeader()
	f := c.others(lead)[0]
	c.nw.Isolate(f)
	// It notices: a pre-candidate knows no leader.
	waitFor(t, "the isolated follower's election timeout", func() bool { return c.node(f).Status().Leader == 0 })
	for i := range 5 {
		c.mustPropose(lead, fmt.Sprint("while cut off ", i))
	}
	// NB: a fixed wait: several more election timeouts (50–100ms each)
	// on the isolated node, each a pre-vote nobody hears.
	time.Sleep(300 * time.Millisecond)
	if st := c.node(f).Status(); st.Term != term {
		t.Errorf("isolated follower at term %d; want %d (a pre-candidate does not raise its term)", st.Term, term)
	}
	c.nw.Heal()
	c.waitConverged(c.node(lead).Status().Applied, c.ids...)
	for _, id := range c.ids {
		if st := c.node(id).Status(); st.Leader != lead || st.Term != term {
			t.Errorf("node %d after heal: leader %d term %d; want %d at %d", id, st.Leader, st.Term, lead, term)
		}
	}
	c.mustPropose(f, "after heal")
}

// TestPartitionMinorityTimesOut: five nodes split two (followers) against
// three (with the leader): proposals on the minority time out, the
// majority serves every proposal, with the same leader; healed, all
// converge.
func TestPartitionMinorityTimesOut(t *testing.T) {
	c := startInmemCluster(t, 5, nil)
	lead, term := c.waitLeader()
	followers := c.others(lead)
	minority, majority := followers[:2], append([]uint64{lead}, followers[2:]...)
	c.nw.Partition(minority, majority)
	var wg sync.WaitGroup
	for _, id := range minority {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			if _, err := c.propose(id, 150*time.Millisecond, "minority"); !errors.Is(err, ErrTimeout) {
				t.Errorf("propose on node %d in the minority: got %v after %v; want ErrTimeout", id, err, time.Since(start))
			}
		}()
	}
	for i := range 3 {
		for _, id := range majority {
			c.mustPropose(id, fmt.Sprintf("majority %d on %d", i, id))
		}
	}
	wg.Wait()
	if got, gotTerm := c.waitLeader(majority...); got != lead || gotTerm != term {
		t.Errorf("majority led by %d at term %d; want %d at %d", got, gotTerm, lead, term)
	}
	c.nw.Heal()
	c.waitConverged(c.node(lead).Status().Applied, c.ids...)
}

// TestPartitionStorageFailureOnLeader: the leader's log failing stops it
// (unhealthy, ErrStopped to proposers); the other two elect a leader and
// go on.
func TestPartitionStorageFailureOnLeader(t *testing.T) {
	c := startInmemCluster(t, 3, nil)
	old, oldTerm := c.waitLeader()
	c.mustPropose(old, "before")
	c.logs[old].fail(errors.New("disk gone"))
	// Its next Ready (a heartbeat's, within a tick) fails to persist.
	waitFor(t, "the failed leader unhealthy", func() bool { return !c.node(old).Status().Healthy })
	start := time.Now()
	if _, err := c.propose(old, 5*time.Second, "on the failed node"); !errors.Is(err, ErrStopped) || time.Since(start) > time.Second {
		t.Errorf("propose on the failed node: got %v after %v; want ErrStopped at once", err, time.Since(start))
	}
	rest := c.others(old)
	lead, term := c.waitLeader(rest...)
	if term <= oldTerm {
		t.Errorf("new leader %d at term %d; want a term above %d", lead, term, oldTerm)
	}
	for _, id := range rest {
		c.mustPropose(id, fmt.Sprint("after the failure on ", id))
	}
	c.waitConverged(c.node(lead).Status().Applied, rest...)
}

// TestPartitionLaggingFollowerCatchesUpBySnapshot: a follower cut off
// while the leader compacts its log past it catches up from a snapshot
// streamed over the in-memory transport, then from the log.
func TestPartitionLaggingFollowerCatchesUpBySnapshot(t *testing.T) {
	c := startInmemCluster(t, 3, func(cfg *Config) { cfg.SnapshotEntries, cfg.KeepEntries = 8, 4 })
	lead, term := c.waitLeader()
	c.mustPropose(lead, "before")
	f := c.others(lead)[0]
	c.waitConverged(0, c.ids...)
	behind := c.node(f).Status().Applied

	c.nw.Isolate(f)
	for i := range 40 {
		c.mustPropose(lead, fmt.Sprint("while cut off ", i))
	}
	if first, _ := c.logs[lead].FirstIndex(); first <= behind+1 {
		t.Fatalf("the leader's log starts at %d, the follower applied %d: not compacted past it", first, behind)
	}
	c.nw.Heal()
	waitFor(t, "a snapshot on the follower", func() bool { return c.node(f).Status().SnapshotsApplied > 0 })
	c.mustPropose(lead, "after heal")
	applied := c.waitConverged(c.node(lead).Status().Applied, c.ids...)
	if got, want := c.sms[f].LogTime(), c.sms[lead].LogTime(); got != want {
		t.Errorf("follower's log time %d; want the leader's %d", got, want)
	}
	if st := c.node(lead).Status(); st.Leader != lead || st.Term != term {
		t.Errorf("leader %d at term %d after the catch-up; want %d at %d", st.Leader, st.Term, lead, term)
	}
	if first, _ := c.logs[f].FirstIndex(); first <= behind+1 || applied <= behind {
		t.Errorf("follower's log starts at %d and applied %d; want it past %d", first, applied, behind)
	}
}

// TestPartitionLeaderThatCannotHear: a leader whose followers' messages no
// longer reach it (its own still reach them) steps down for want of a
// quorum (CheckQuorum); the followers, no longer hearing from it, elect
// one of theirs, whom its pre-votes do not disturb; healed, all converge.
func TestPartitionLeaderThatCannotHear(t *testing.T) {
	c := startInmemCluster(t, 3, nil)
	old, oldTerm := c.waitLeader()
	for _, id := range c.others(old) {
		c.nw.DisconnectOneWay(id, old)
	}
	rest := c.others(old)
	lead, term := c.waitLeader(rest...)
	if term <= oldTerm {
		t.Errorf("new leader %d at term %d; want a term above %d", lead, term, oldTerm)
	}
	for _, id := range rest {
		c.mustPropose(id, fmt.Sprint("on ", id))
	}
	if _, err := c.propose(old, 100*time.Millisecond, "on the deaf node"); !errors.Is(err, ErrTimeout) {
		t.Errorf("propose on the deaf node: got %v; want ErrTimeout", err)
	}
	c.nw.Heal()
	if got, gotTerm := c.waitLeader(); got != lead || gotTerm != term {
		t.Errorf("after heal node %d leads at term %d; want %d at %d", got, gotTerm, lead, term)
	}
	c.waitConverged(c.node(lead).Status().Applied, c.ids...)
}

// TestPartitionLossyLinks: with every link losing a tenth of the raft
// messages and delaying the rest a little, every proposal, on any node,
// still applies, and the logs converge.
func TestPartitionLossyLinks(t *testing.T) {
	c := startInmemCluster(t, 3, nil)
	c.waitLeader()
	for _, a := range c.ids {
		for _, b := range c.others(a) {
			c.nw.SetDrop(a, b, 0.1)
			c.nw.SetDelay(a, b, time.Duration(a+b)*time.Millisecond/2)
		}
	}
	for i := range 30 {
		id := c.ids[i%len(c.ids)]
		c.mustPropose(id, fmt.Sprintf("lossy %d on %d", i, id))
	}
	lead, _ := c.waitLeader()
	c.waitConverged(c.node(lead).Status().Applied, c.ids...)
}

// TestPartitionRestartedFollowerRejoins: a follower stopped while the
// others go on, then started again over its log and state machine on a
// new transport for the same id, rejoins and catches up.
func TestPartitionRestartedFollowerRejoins(t *testing.T) {
	c := startInmemCluster(t, 3, nil)
	lead, term := c.waitLeader()
	f := c.others(lead)[0]
	c.node(f).Stop()
	for i := range 5 {
		c.mustPropose(lead, fmt.Sprint("while stopped ", i))
	}
	c.restart(f)
	c.waitConverged(c.node(lead).Status().Applied, c.ids...)
	c.mustPropose(f, "after restart")
	if st := c.node(lead).Status(); st.Leader != lead || st.Term != term {
		t.Errorf("leader %d at term %d after the restart; want %d at %d", st.Leader, st.Term, lead, term)
	}
}

// TestCompactionSurvivesRestarts: a node restarted more often than every
// SnapshotEntries still compacts its log (compaction counts from where the
// last one left the log, not from the restart).
func TestCompactionSurvivesRestarts(t *testing.T) {
	c := startInmemCluster(t, 3, func(cfg *Config) { cfg.SnapshotEntries, cfg.KeepEntries = 20, 5 })
	lead, _ := c.waitLeader()
	f := c.others(lead)[0]
	for round := range 8 {
		for i := range 8 { // fewer than SnapshotEntries between restarts
			c.mustPropose(lead, fmt.Sprint("round ", round, " ", i))
		}
		c.waitConverged(c.node(lead).Status().Applied, c.ids...)
		c.restart(f)
		lead, _ = c.waitLeader()
	}
	c.mustPropose(lead, "last")
	applied := c.waitConverged(c.node(lead).Status().Applied, c.ids...)
	waitFor(t, "the restarted follower's log compacted", func() bool {
		first, _ := c.logs[f].FirstIndex()
		return first > applied-20-5
	})
}

package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The membership measurements of the large-state benchmark: at each state
// size, a fourth node joins with an empty data dir (--join), is sent the
// state, promoted to voter by the leader and removed again; then a
// follower is killed and replaced as an operator would (remove it, wipe
// its data dir, start it again with --join). A light paced write load runs
// throughout; its longest time without a completed lifecycle is reported.

// electionBound is the longest keystored's default election takes: 10
// ticks of 100 ms, randomised by Raft up to twice that. No write may fail
// for longer while a follower is replaced.
const electionBound = 2 * time.Second

// joinName is the fourth node's name; its ports follow n3's.
const joinName = "n4"

// memberTimes are the moments a node went through while joining, in
// seconds from the event they are timed from (0: not reached).
type memberTimes struct {
	// LearnerS: the node is in the leader's MemberList (it is added as a
	// learner; seen as a voter at once if the promotion came first).
	LearnerS float64 `json:"learner_s"`
	// VoterS: the leader's MemberList shows it no longer a learner.
	VoterS float64 `json:"voter_s"`
	// ServingS: its gRPC health (service "") says SERVING.
	ServingS float64 `json:"serving_s"`
	// CaughtUpS: its applied index reached the leader's commit index.
	CaughtUpS float64 `json:"caught_up_s"`
}

// largeJoin is the join of a fourth node at one state size, and its
// removal.
type largeJoin struct {
	Kind       string `json:"kind"` // "join"
	State      string `json:"state"`
	Node       string `json:"node"`
	ID         string `json:"id"`
	Leader     string `json:"leader"`
	Records    uint64 `json:"stored_records"`
	DiskBytes  int64  `json:"leader_disk_bytes"`
	TableBytes int64  `json:"leader_sst_bytes"`
	// CommitAtStart is the leader's commit index when the node starts.
	CommitAtStart uint64 `json:"leader_commit_at_start"`
	// Times from the process's start.
	memberTimes
	// BySnapshot: the node's log says it received and applied a snapshot.
	BySnapshot  bool             `json:"by_snapshot"`
	Snapshot    snapLog          `json:"snapshot"`
	RSSPeak     map[string]int64 `json:"rss_peak"`
	ChecksumAt  uint64           `json:"checksum_equal_at"`
	ChecksumErr string           `json:"checksum_error,omitempty"`
	// The removal: MemberRemove's call, and from its start until the
	// process exited (a removed node learns it and stops by itself).
	RemoveVia string  `json:"remove_via"`
	RemoveS   float64 `json:"remove_s"`
	ExitS     float64 `json:"exit_s"`
	ExitCode  int     `json:"exit_code"`
	// Load is the paced writes from just before the start to the node
	// serving as a voter; its gap is timed from the start.
	Load *pacedStats `json:"load,omitempty"`
	Err  string      `json:"error,omitempty"`
}

// largeReplace is a killed follower's replacement at one state size.
type largeReplace struct {
	Kind   string `json:"kind"` // "replace"
	State  string `json:"state"`
	Node   string `json:"node"`
	Leader string `json:"leader"`
	OldID  string `json:"old_id"`
	NewID  string `json:"new_id"`
	// RemoveVia is the node MemberRemove was sent to; RemoveTries how
	// many calls it took.
	RemoveVia   string `json:"remove_via"`
	RemoveTries int    `json:"remove_tries"`
	// Times from the SIGKILL: MemberRemove returned, the node started
	// again (its data dir wiped), then the joiner's moments.
	RemovedS float64 `json:"removed_s"`
	StartS   float64 `json:"start_s"`
	memberTimes
	// VoterServingS: from the kill until it is a voter and SERVING.
	VoterServingS float64          `json:"voter_serving_s"`
	BySnapshot    bool             `json:"by_snapshot"`
	Snapshot      snapLog          `json:"snapshot"`
	RSSPeak       map[string]int64 `json:"rss_peak"`
	ChecksumAt    uint64           `json:"checksum_equal_at"`
	ChecksumErr   string           `json:"checksum_error,omitempty"`
	// Load is the paced writes from before the kill to the node serving
	// as a voter; its gap is timed from the kill.
	Load *pacedStats `json:"load,omitempty"`
	Err  string      `json:"error,omitempty"`
}

// measureMembership runs the join and the replacement at one state size.
// Problems that leave the cluster usable (a checksum, an exit status, a
// write gap) go to rep.Failures; the error is for the others.
func measureMembership(ctx context.Context, cfg largeConfig, cl *ksCluster, kc *client.Client, state string, rep *largeReport) error {
	settled, err := settle(ctx, cl, cfg.settle)
	if err != nil {
		return err
	}
	logf("membership: nodes idle after %.0f s", settled.Seconds())
	j, problems, err := joinFourth(ctx, cfg, cl, kc, state)
	rep.Joins = append(rep.Joins, j)
	rep.Failures = append(rep.Failures, problems...)
	if err != nil {
		return err
	}
	r, problems, err := replaceFollower(ctx, cfg, cl, kc, state)
	rep.Replaces = append(rep.Replaces, r)
	rep.Failures = append(rep.Failures, problems...)
	return err
}

// joinFourth starts a fourth node with an empty data dir and --join the
// three members, times it to learner, voter, SERVING and caught up,
// compares the four replicas' checksums, then removes it and waits for its
// process to exit (status 0: a removed node's job is done).
func joinFourth(ctx context.Context, cfg largeConfig, cl *ksCluster, kc *client.Client, state string) (*largeJoin, []string, error) {
	j := &largeJoin{Kind: "join", State: state, Node: joinName, ExitCode: -1}
	var problems []string
	fail := func(err error) (*largeJoin, []string, error) {
		j.Err = err.Error()
		return j, problems, err
	}
	ls, err := mustLeaderStatus(ctx, cl)
	if err != nil {
		return fail(err)
	}
	leader := ls.node
	j.Leader, j.Records, j.CommitAtStart = leader.name, ls.GetStoredRecords(), ls.GetCommitIndex()
	j.DiskBytes, j.TableBytes = dirBytes(leader.dataDir, ""), dirBytes(leader.dataDir, ".sst")
	n, err := cl.addNode(joinName, cfg.clientBase+3, cfg.peerBase+3)
	if err != nil {
		return fail(err)
	}
	dropped := false
	defer func() {
		if !dropped { // failed half-way: stop it, and leave the three
			_, _ = cl.stop(n, 10*time.Second)
			cl.dropNode(n)
		}
	}()
	if err := os.RemoveAll(n.dataDir); err != nil {
		return fail(err)
	}
	offsets := logOffsets(cl)
	logf("join: starting %s with an empty data dir, --join %v (leader %s: %s stored, commit %d)",
		n.name, n.join, leader.name, commas(int64(j.Records)), j.CommitAtStart)

	load := startPaced(ctx, kc, fmt.Sprintf("join%d", time.Now().UnixNano()), cfg.memberRate, cfg.memberWorkers)
	if err := sleepCtx(ctx, 2*time.Second); err != nil { // the load's baseline
		load.stop(time.Now())
		return fail(err)
	}
	sampler := startRSSSampler(cl, 100*time.Millisecond)
	t0 := time.Now()
	err = cl.start(n)
	if err == nil {
		j.ID, err = watchJoin(ctx, cl, n, "", t0, cfg.memberTimeout, &j.memberTimes)
	}
	if err == nil {
		err = sleepCtx(ctx, 2*time.Second)
	}
	j.RSSPeak, _ = sampler.finish()
	j.Load = load.stop(t0)
	if err != nil {
		return fail(err)
	}
	logf("join: %s (id %s) a learner %.2f s, a voter %.2f s, SERVING %.2f s, caught up %.2f s after its start",
		n.name, j.ID, j.LearnerS, j.VoterS, j.ServingS, j.CaughtUpS)
	logf("join: paced writes: %s", j.Load.summary())
	if j.Load.LongestGapS > electionBound.Seconds() {
		problems = append(problems, fmt.Sprintf("join of %s at %s: no write completed for %.2f s (more than an election, %v)", n.name, state, j.Load.LongestGapS, electionBound))
	}
	idx, err := cl.sameState(ctx, 3*time.Minute)
	j.ChecksumAt = idx
	if err != nil {
		j.ChecksumErr = err.Error()
		problems = append(problems, fmt.Sprintf("join of %s at %s: %v", n.name, state, err))
	} else {
		logf("join: state checksums equal on all four nodes at applied index %d", idx)
	}
	j.Snapshot = readSnapLogs(cl, offsets)
	j.BySnapshot = bySnapshot(j.Snapshot, n.name)
	if !j.BySnapshot {
		problems = append(problems, fmt.Sprintf("join of %s at %s: its log shows no snapshot received and applied", n.name, state))
	}
	logSnapshot("join", j.Snapshot)

	// Remove it again, through a member that stays.
	via := leader
	if via == n || via.pid() == 0 {
		via = cl.nodes[0]
	}
	j.RemoveVia = via.name
	done, status := n.exited()
	n.expectExit()
	t1 := time.Now()
	if _, err := removeMember(ctx, via, j.ID, time.Minute); err != nil {
		return fail(fmt.Errorf("remove %s: %w", n.name, err))
	}
	j.RemoveS = time.Since(t1).Seconds()
	select {
	case <-done:
		j.ExitS = time.Since(t1).Seconds()
		j.ExitCode = status()
	case <-time.After(time.Minute):
		problems = append(problems, fmt.Sprintf("join of %s at %s: still running a minute after its removal; stopped", n.name, state))
		_, _ = cl.stop(n, 10*time.Second)
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	if j.ExitCode != 0 && j.ExitS > 0 {
		problems = append(problems, fmt.Sprintf("join of %s at %s: after its removal it exited with status %d; end of its log:\n%s", n.name, state, j.ExitCode, logTail(n.logPath, 5)))
	}
	cl.dropNode(n)
	dropped = true
	_ = os.RemoveAll(n.dataDir)
	logf("join: removed %s through %s in %.2f s; it exited %.2f s after the call began, status %d", n.name, via.name, j.RemoveS, j.ExitS, j.ExitCode)
	if err := waitMembers(ctx, cl, len(cl.nodes), time.Minute); err != nil {
		return fail(err)
	}
	return j, problems, cl.checkAlive()
}

// replaceFollower SIGKILLs a follower and replaces it as an operator
// would: MemberRemove through the leader, wipe its data dir, start it
// again with the same name and ports, an empty data dir and --join the
// others; timed from the kill to removed, learner, voter, SERVING.
func replaceFollower(ctx context.Context, cfg largeConfig, cl *ksCluster, kc *client.Client, state string) (*largeReplace, []string, error) {
	r := &largeReplace{Kind: "replace", State: state}
	var problems []string
	fail := func(err error) (*largeReplace, []string, error) {
		r.Err = err.Error()
		return r, problems, err
	}
	leader, err := cl.leader(ctx, time.Minute)
	if err != nil {
		return fail(err)
	}
	f := cl.follower(leader)
	r.Node, r.Leader, r.RemoveVia = f.name, leader.name, leader.name
	ml, err := memberList(ctx, leader)
	if err != nil {
		return fail(err)
	}
	for _, m := range ml {
		if m.GetName() == f.name {
			r.OldID = m.GetId()
		}
	}
	if r.OldID == "" {
		return fail(fmt.Errorf("%s is not in %s's member list", f.name, leader.name))
	}
	offsets := logOffsets(cl)
	load := startPaced(ctx, kc, fmt.Sprintf("repl%d", time.Now().UnixNano()), cfg.memberRate, cfg.memberWorkers)
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		load.stop(time.Now())
		return fail(err)
	}
	sampler := startRSSSampler(cl, 100*time.Millisecond)
	logf("replace: SIGKILL %s (id %s; leader %s)", f.name, r.OldID, leader.name)
	tk := time.Now()
	cl.kill(f)
	err = func() error {
		tries, err := removeMember(ctx, leader, r.OldID, time.Minute)
		r.RemoveTries = tries
		if err != nil {
			return fmt.Errorf("remove %s: %w", f.name, err)
		}
		r.RemovedS = time.Since(tk).Seconds()
		if err := os.RemoveAll(f.dataDir); err != nil {
			return err
		}
		var others []string
		for _, m := range cl.nodes {
			if m != f {
				others = append(others, m.clientAddr)
			}
		}
		f.join = others
		if err := cl.start(f); err != nil {
			return err
		}
		r.StartS = time.Since(tk).Seconds()
		r.NewID, err = watchJoin(ctx, cl, f, r.OldID, tk, cfg.memberTimeout, &r.memberTimes)
		if err != nil {
			return err
		}
		r.VoterServingS = max(r.VoterS, r.ServingS)
		return sleepCtx(ctx, 2*time.Second)
	}()
	r.RSSPeak, _ = sampler.finish()
	r.Load = load.stop(tk)
	if err != nil {
		return fail(err)
	}
	logf("replace: %s removed %.2f s after the kill (%d call%s), started %.2f s, a learner %.2f s, a voter %.2f s, SERVING %.2f s, caught up %.2f s after it",
		f.name, r.RemovedS, r.RemoveTries, plural(int64(r.RemoveTries)), r.StartS, r.LearnerS, r.VoterS, r.ServingS, r.CaughtUpS)
	logf("replace: paced writes: %s", r.Load.summary())
	if r.Load.LongestGapS > electionBound.Seconds() {
		problems = append(problems, fmt.Sprintf("replace of %s at %s: no write completed for %.2f s (more than an election, %v)", f.name, state, r.Load.LongestGapS, electionBound))
	}
	idx, err := cl.sameState(ctx, 3*time.Minute)
	r.ChecksumAt = idx
	if err != nil {
		r.ChecksumErr = err.Error()
		problems = append(problems, fmt.Sprintf("replace of %s at %s: %v", f.name, state, err))
	} else {
		logf("replace: state checksums equal on all three nodes at applied index %d", idx)
	}
	r.Snapshot = readSnapLogs(cl, offsets)
	r.BySnapshot = bySnapshot(r.Snapshot, f.name)
	if !r.BySnapshot {
		problems = append(problems, fmt.Sprintf("replace of %s at %s: its log shows no snapshot received and applied", f.name, state))
	}
	logSnapshot("replace", r.Snapshot)
	return r, problems, cl.checkAlive()
}

// watchJoin polls, each on its own, the leader's MemberList for a member
// named n.name whose id is not notID (a learner, then a voter), n's
// health for SERVING, and n's applied index against the leader's commit
// index, filling t with the times since t0, until all are reached. It
// returns the member's id.
func watchJoin(ctx context.Context, cl *ksCluster, n *ksNode, notID string, t0 time.Time, timeout time.Duration, t *memberTimes) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		id   string
		errs = make([]error, 3)
	)
	poll := func(i int, what string, step func() (bool, error)) {
		defer wg.Done()
		var last error
		for {
			ok, err := step()
			if ok {
				return
			}
			if err != nil {
				last = err
			}
			if err := cl.checkAlive(); err != nil {
				errs[i] = err
				cancel()
				return
			}
			if n.pid() == 0 {
				errs[i] = fmt.Errorf("%s exited while joining; end of its log:\n%s", n.name, logTail(n.logPath, 15))
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				if errs[i] == nil {
					errs[i] = fmt.Errorf("%s: not %s within %v (last error: %v)", n.name, what, timeout, last)
				}
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	wg.Add(3)
	// The leader's view of the members: learner, then voter.
	go poll(0, "a voter", func() (bool, error) {
		l, err := cl.leader(ctx, 5*time.Second)
		if err != nil {
			return false, err
		}
		ms, err := memberList(ctx, l)
		if err != nil {
			return false, err
		}
		now := time.Since(t0).Seconds()
		for _, m := range ms {
			if m.GetName() != n.name || m.GetId() == notID {
				continue
			}
			mu.Lock()
			id = m.GetId()
			mu.Unlock()
			if t.LearnerS == 0 {
				t.LearnerS = now
			}
			if !m.GetIsLearner() {
				t.VoterS = now
				return true, nil
			}
		}
		return false, nil
	})
	go poll(1, "SERVING", func() (bool, error) {
		hctx, hcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		resp, err := n.health.Check(hctx, &healthpb.HealthCheckRequest{Service: ""})
		hcancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			t.ServingS = time.Since(t0).Seconds()
			return true, nil
		}
		return false, err
	})
	go poll(2, "caught up", func() (bool, error) {
		l, err := cl.leader(ctx, 5*time.Second)
		if err != nil {
			return false, err
		}
		fst, err := n.status(ctx, 500*time.Millisecond, false)
		if err != nil {
			return false, err
		}
		lst, err := l.status(ctx, 500*time.Millisecond, false)
		if err != nil {
			return false, err
		}
		if fst.GetAppliedIndex() > 0 && fst.GetAppliedIndex() >= lst.GetCommitIndex() {
			t.CaughtUpS = time.Since(t0).Seconds()
			return true, nil
		}
		return false, nil
	})
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return id, errors.Join(errs...)
}

// memberList asks n for the members.
func memberList(ctx context.Context, n *ksNode) ([]*keystorev1.Member, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := n.cluster.MemberList(ctx, &keystorev1.MemberListRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetMembers(), nil
}

// removeMember calls MemberRemove{id} on via until it succeeds (a refusal
// may be lifted by news from the peers) or timeout passes. It returns the
// number of calls.
func removeMember(ctx context.Context, via *ksNode, id string, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for tries := 1; ; tries++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := via.cluster.MemberRemove(cctx, &keystorev1.MemberRemoveRequest{Id: id})
		cancel()
		if err == nil {
			return tries, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return tries, fmt.Errorf("MemberRemove %s through %s: %w", id, via.name, err)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return tries, err
		}
	}
}

// waitMembers waits until the leader lists want members.
func waitMembers(ctx context.Context, cl *ksCluster, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var got int
	for {
		l, err := cl.leader(ctx, timeout)
		if err != nil {
			return err
		}
		ms, err := memberList(ctx, l)
		if err == nil && len(ms) == want {
			return nil
		}
		got = len(ms)
		if time.Now().After(deadline) {
			return fmt.Errorf("the leader lists %d members, not %d, after %v (last error: %v)", got, want, timeout, err)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// logOffsets returns each node's log size: where the next step's lines
// begin.
func logOffsets(cl *ksCluster) map[string]int64 {
	out := map[string]int64{}
	for _, n := range cl.nodes {
		out[n.name] = n.logSize()
	}
	return out
}

// bySnapshot reports whether node's log says it received and applied a
// snapshot.
func bySnapshot(l snapLog, node string) bool {
	var received, applied bool
	for _, e := range l.Received {
		received = received || e.Node == node
	}
	for _, e := range l.Applied {
		applied = applied || e.Node == node
	}
	return received && applied
}

func logSnapshot(step string, l snapLog) {
	if n := len(l.Sent); n > 0 {
		s := l.Sent[n-1]
		logf("%s: snapshot of %s (index %d) sent by %s in %.1f s; %d send(s), %d failed", step, mb(s.Bytes), s.Index, s.Node, s.DurationMs/1000, n, l.SendFailures+l.ReceiveFailures)
	} else {
		logf("%s: no \"sent snapshot\" in the logs", step)
	}
}

// pacedStats is what a paced load did.
type pacedStats struct {
	TargetPerS float64 `json:"target_per_s"`
	Workers    int     `json:"workers"`
	Stored     int64   `json:"stored"`
	Errors     int64   `json:"errors"`
	DurationS  float64 `json:"duration_s"`
	// LongestGapS is the longest time in which no lifecycle completed
	// (the end of the load counts as one); GapStartS when it began, in
	// seconds from the event the step is timed from (negative: before).
	LongestGapS float64 `json:"longest_gap_s"`
	GapStartS   float64 `json:"longest_gap_start_s"`
	FirstError  string  `json:"first_error,omitempty"`
}

func (s *pacedStats) perS() float64 {
	if s.DurationS <= 0 {
		return 0
	}
	return float64(s.Stored) / s.DurationS
}

func (s *pacedStats) summary() string {
	out := fmt.Sprintf("%s lifecycles in %.1f s (%.0f/s of %.0f/s asked), %d errors, longest gap %.3f s at %+.2f s",
		commas(s.Stored), s.DurationS, s.perS(), s.TargetPerS, s.Errors, s.LongestGapS, s.GapStartS)
	if s.FirstError != "" {
		out += "; first error: " + s.FirstError
	}
	return out
}

// pacedLoad is a light write load at a fixed rate: workers lifecycles in
// turn, each worker at rate/workers, never catching up on a slot it
// missed (no burst after an outage).
type pacedLoad struct {
	rate    float64
	workers int
	begin   time.Time
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	stored, failed atomic.Int64
	mu             sync.Mutex
	last           time.Time // the last completion (begin at first)
	gap            time.Duration
	gapStart       time.Time
	firstErr       string
}

// startPaced starts a paced load over kc; rate ≤ 0 writes nothing.
func startPaced(ctx context.Context, kc *client.Client, prefix string, rate float64, workers int) *pacedLoad {
	ctx, cancel := context.WithCancel(ctx)
	p := &pacedLoad{rate: rate, workers: workers, begin: time.Now(), cancel: cancel}
	p.last = p.begin
	if rate <= 0 {
		return p
	}
	interval := time.Duration(float64(workers) / rate * float64(time.Second))
	for w := range workers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			var seed [32]byte
			_, _ = rand.Read(seed[:])
			rng := mrand.New(mrand.NewChaCha8(seed))
			fp := make([]byte, fingerprintLen)
			body := make([]byte, 200)
			next := p.begin.Add(time.Duration(rng.Int64N(int64(interval))))
			for seq := 0; ; seq++ {
				if d := time.Until(next); d > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(d):
					}
				}
				if ctx.Err() != nil {
					return
				}
				next = next.Add(interval)
				if now := time.Now(); now.Sub(next) > interval {
					next = now
				}
				fillRandom(rng, fp)
				fillRandom(rng, body)
				err := storeOne(ctx, kc, fmt.Sprintf("%s/%d/%d", prefix, w, seq), fp, body, 10*time.Second)
				if ctx.Err() != nil {
					return // stopped: an interrupted call is not a failure
				}
				now := time.Now()
				if err != nil {
					p.failed.Add(1)
					p.mu.Lock()
					if p.firstErr == "" {
						p.firstErr = fmt.Sprintf("at %s: %v", now.Format("15:04:05.000"), err)
					}
					p.mu.Unlock()
					continue
				}
				p.stored.Add(1)
				p.completed(now)
			}
		}()
	}
	return p
}

func (p *pacedLoad) completed(at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !at.After(p.last) {
		return
	}
	if g := at.Sub(p.last); g > p.gap {
		p.gap, p.gapStart = g, p.last
	}
	p.last = at
}

// stop ends the load and returns its figures, the gap's start timed from
// ref.
func (p *pacedLoad) stop(ref time.Time) *pacedStats {
	end := time.Now()
	p.cancel()
	p.wg.Wait()
	p.completed(end) // a gap still open at the end counts
	p.mu.Lock()
	defer p.mu.Unlock()
	s := &pacedStats{TargetPerS: p.rate, Workers: p.workers, Stored: p.stored.Load(), Errors: p.failed.Load(),
		DurationS: end.Sub(p.begin).Seconds(), FirstError: p.firstErr}
	if p.rate > 0 {
		s.LongestGapS, s.GapStartS = p.gap.Seconds(), p.gapStart.Sub(ref).Seconds()
	}
	return s
}

package harness

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// Membership faults replace a node the way docs and README tell an
// operator to (README.md, "Replacing a node"): remove its member, wipe its
// data dir, start it empty with --join under the same name and addresses,
// and it joins as a learner under a new Raft id, is sent the state and is
// promoted to voter once caught up. Everything in the harness that is
// keyed by node name (addresses, proxies, routes, connections, logs) stays
// valid across the change; only the Raft id changes, which nothing in the
// harness or the checkers keys on.

// Limits of a membership fault's steps.
const (
	// removeLimit bounds the retries of a MemberRemove: a change in
	// flight, or a quorum the leader does not hear (another fault), may
	// refuse it for a while.
	removeLimit = 15 * time.Second
	// exitLimit bounds how long a removed live node takes to find out and
	// exit (it may not hear its removal commit and learns of it by asking
	// its peers once it has known no leader for a while).
	exitLimit = 30 * time.Second
	// rejoinLimit bounds how long a rejoined node takes to be a voter
	// again, and to serve.
	rejoinLimit = 60 * time.Second
)

// MemberList asks node via for the members.
func (c *Cluster) MemberList(ctx context.Context, via string) ([]*keystorev1.Member, error) {
	actx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := keystorev1.NewClusterServiceClient(c.conns[via]).MemberList(actx, &keystorev1.MemberListRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetMembers(), nil
}

// caughtUpList is via's member list if via's view can be trusted to say
// who is a member: it names every node but except (only one membership
// change runs at a time, so a view that does not is one that has not
// applied the log yet, e.g. of a node that has just joined).
func (c *Cluster) caughtUpList(ctx context.Context, via, except string) ([]*keystorev1.Member, error) {
	ms, err := c.MemberList(ctx, via)
	if err != nil {
		return nil, err
	}
	for _, n := range others(c.Names, except) {
		if !slices.ContainsFunc(ms, func(m *keystorev1.Member) bool { return m.GetName() == n }) {
			return nil, fmt.Errorf("%s's member list does not name %s yet", via, n)
		}
	}
	return ms, nil
}

// MemberID returns n's Raft id (hex) and whether it leads, as the first
// other node with a caught-up view sees it.
func (c *Cluster) MemberID(ctx context.Context, n string) (id string, leader bool, err error) {
	err = errors.New("no node answered")
	for _, via := range others(c.Names, n) {
		ms, lerr := c.caughtUpList(ctx, via, "")
		if lerr != nil {
			err = fmt.Errorf("%s: %w", via, lerr)
			continue
		}
		for _, m := range ms {
			if m.GetName() == n {
				return m.GetId(), m.GetIsLeader(), nil
			}
		}
		err = fmt.Errorf("%s does not list %s", via, n)
	}
	return "", false, err
}

// RemoveMember removes member id (node n's) through the other nodes,
// retrying for up to limit. It returns nil once a node whose view is caught
// up no longer lists id (a view changes only with an applied, so
// committed, removal), or MemberRemove said done.
func (c *Cluster) RemoveMember(ctx context.Context, n, id string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var errs []string
	for {
		for _, via := range others(c.Names, n) {
			if time.Until(deadline) <= 0 || ctx.Err() != nil {
				return fmt.Errorf("%d attempts, the last: %s", len(errs), lastOf(errs))
			}
			if !c.Running(via) {
				continue
			}
			if ms, err := c.caughtUpList(ctx, via, n); err == nil &&
				!slices.ContainsFunc(ms, func(m *keystorev1.Member) bool { return m.GetId() == id }) {
				return nil
			}
			actx, cancel := context.WithTimeout(ctx, min(5*time.Second, time.Until(deadline)))
			_, err := keystorev1.NewClusterServiceClient(c.conns[via]).MemberRemove(actx, &keystorev1.MemberRemoveRequest{Id: id})
			cancel()
			if err == nil {
				return nil
			}
			errs = append(errs, fmt.Sprintf("%s: %v", via, err))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func lastOf(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return s[len(s)-1]
}

// WaitVoter waits up to limit until a node lists a voter named n under
// another id than old, and returns that id.
func (c *Cluster) WaitVoter(ctx context.Context, n, old string, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	last := "no answer"
	for {
		for _, via := range c.Names {
			ms, err := c.MemberList(ctx, via)
			if err != nil {
				continue
			}
			for _, m := range ms {
				if m.GetName() != n || m.GetId() == old {
					continue
				}
				if !m.GetIsLearner() {
					return m.GetId(), nil
				}
				last = fmt.Sprintf("%s lists %s (id %s) as a learner", via, n, m.GetId())
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("%s not a voter within %s (%s)", n, limit, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitMembers waits until every node lists exactly the cluster's nodes as
// members, each once and each a voter: after healing, every membership
// change must have come to rest.
func (c *Cluster) WaitMembers(ctx context.Context) error {
	want := strings.Join(c.Names, " ")
	for {
		var bad string
		for _, n := range c.Names {
			ms, err := c.MemberList(ctx, n)
			if err != nil {
				bad = fmt.Sprintf("%s: %v", n, err)
				break
			}
			var got []string
			for _, m := range ms {
				s := m.GetName()
				if m.GetIsLearner() {
					s += "(learner)"
				}
				got = append(got, s)
			}
			sort.Strings(got)
			if strings.Join(got, " ") != want {
				bad = fmt.Sprintf("%s lists members %v, want voters %v", n, got, c.Names)
				break
			}
		}
		if bad == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("membership never settled: %s", bad)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// changeMembership runs a replace or remove-rejoin fault on f.Nodes[0]
// (see FaultReplace, FaultRemoveRejoin), filling in f's Recovery, Rejoin,
// CaughtUp and Note (notes that start with SERVER: are keystored not doing
// what it promises). Its caller holds the schedule so that no other node
// is down meanwhile. Once it began, it finishes even if ctx ends (a removed node
// left wiped or unstarted would fail the run's convergence check), each
// step within its limit.
func changeMembership(ctx context.Context, c *Cluster, f *Fault, nodeMu *sync.Mutex) {
	ctx = context.WithoutCancel(ctx)
	node := f.Nodes[0]
	rest := others(c.Names, node)
	id, leader, err := c.MemberID(ctx, node)
	if err != nil {
		f.Note = fmt.Sprintf("skipped: no member id for %s: %v", node, err)
		return
	}
	role := "follower"
	if leader {
		role = "leader"
	}
	notes := []string{fmt.Sprintf("%s (%s, id %s)", node, role, id)}
	defer func() { f.Note = strings.Join(notes, "; ") }()

	if f.Kind == FaultReplace {
		nodeMu.Lock()
		c.Kill(node)
		nodeMu.Unlock()
		c.Note(node, "killed (SIGKILL) to be replaced")
		// As kill: recovery from the kill, through the live nodes; the
		// operator's removal comes once they serve.
		f.Recovery = probeRecovery(ctx, c, rest, f.Start, 10*time.Second)
	}
	removeStart := time.Now()
	if err := c.RemoveMember(ctx, node, id, removeLimit); err != nil {
		if f.Kind == FaultRemoveRejoin {
			notes = append(notes, fmt.Sprintf("not removed within %s (%v): left as it is", removeLimit, err))
			return
		}
		// It cannot be removed now: the operator restarts the node with
		// its data intact instead (its disk was fine after all).
		notes = append(notes, fmt.Sprintf("not removed within %s (%v): restarted with its data", removeLimit, err))
		nodeMu.Lock()
		_ = c.StartNode(node)
		nodeMu.Unlock()
		// Unless an attempt took effect after all: then the node finds
		// out, exits, and is replaced as planned.
		if !waitRemovedAfterAll(ctx, c, node, id) {
			return
		}
		nodeMu.Lock()
		code, _ := c.WaitExit(node, time.Second)
		nodeMu.Unlock()
		notes = append(notes, fmt.Sprintf("it was removed after all and exited with status %d", code))
	}
	notes = append(notes, fmt.Sprintf("removed in %s", time.Since(removeStart).Round(time.Millisecond)))
	if f.Kind == FaultRemoveRejoin {
		c.Note(node, "removed by the harness (MemberRemove through another node)")
		f.Recovery = probeRecovery(ctx, c, rest, removeStart, 10*time.Second)
		code, exited := c.WaitExit(node, exitLimit)
		switch {
		case !exited:
			notes = append(notes, fmt.Sprintf("SERVER: still running %s after its removal: killed", exitLimit))
			nodeMu.Lock()
			c.Kill(node)
			nodeMu.Unlock()
		case code != 0:
			notes = append(notes, fmt.Sprintf("SERVER: exited with status %d after its removal (want 0)", code))
		default:
			notes = append(notes, fmt.Sprintf("exited 0 after %s", time.Since(removeStart).Round(time.Millisecond)))
		}
	}
	nodeMu.Lock()
	err = c.Rejoin(node)
	nodeMu.Unlock()
	if err != nil {
		notes = append(notes, fmt.Sprintf("rejoin failed to start: %v", err))
		return
	}
	rejoinStart := time.Now()
	newID, err := c.WaitVoter(ctx, node, id, rejoinLimit)
	if err != nil {
		if c.Exited(node) {
			notes = append(notes, fmt.Sprintf("SERVER: the joining node exited (see %s)", c.LogPath(node)))
		}
		notes = append(notes, err.Error())
		return
	}
	f.Rejoin = time.Since(rejoinStart)
	notes = append(notes, fmt.Sprintf("rejoined as %s, a voter after %s", newID, f.Rejoin.Round(time.Millisecond)))
	if err := c.waitNodeServing(ctx, node, rejoinStart.Add(rejoinLimit)); err != nil {
		notes = append(notes, fmt.Sprintf("SERVER: a voter, yet not serving %s after it joined (%v)", rejoinLimit, err))
		return
	}
	f.CaughtUp = time.Since(rejoinStart)
	notes = append(notes, fmt.Sprintf("serving after %s", f.CaughtUp.Round(time.Millisecond)))
}

// waitNodeServing waits until n reports serving (it knows the leader and
// has applied up to the leader's commit index), or deadline.
func (c *Cluster) waitNodeServing(ctx context.Context, n string, deadline time.Time) error {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, err := c.Status(actx, n)
		cancel()
		switch {
		case err != nil:
			last = err
		case st.GetServing():
			return nil
		default:
			last = fmt.Errorf("applied %d, commit %d", st.GetAppliedIndex(), st.GetCommitIndex())
		}
		if time.Now().After(deadline) {
			return last
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitRemovedAfterAll watches node n, restarted with its data after its
// removal (of member id) seemed to fail, until a caught-up node lists id
// again as a member and n serves (false), or n exits because a removal
// took effect after all (true), for up to 10 s (false).
func waitRemovedAfterAll(ctx context.Context, c *Cluster, n, id string) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c.Exited(n) {
			return true
		}
		actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		st, err := c.Status(actx, n)
		cancel()
		if err == nil && st.GetServing() {
			for _, via := range others(c.Names, n) {
				ms, err := c.caughtUpList(ctx, via, "")
				if err == nil && slices.ContainsFunc(ms, func(m *keystorev1.Member) bool { return m.GetId() == id }) {
					return false
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c.Exited(n)
}

// WaitGossipAlive waits until every node's member list shows every member
// alive in gossip (without gossip: at once). Gossip advises only, so this
// is no correctness rule; after healing it tells how long gossip took to
// see the cluster whole again.
func (c *Cluster) WaitGossipAlive(ctx context.Context) error {
	if c.cfg.NoGossip {
		return nil
	}
	for {
		var bad string
		for _, n := range c.Names {
			ms, err := c.MemberList(ctx, n)
			if err != nil {
				bad = fmt.Sprintf("%s: %v", n, err)
				break
			}
			for _, m := range ms {
				if m.GetGossipState() != "alive" {
					bad = fmt.Sprintf("%s sees %s (id %s) as %q in gossip", n, m.GetName(), m.GetId(), m.GetGossipState())
				}
			}
		}
		if bad == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gossip never saw every member alive: %s", bad)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

package raftnode

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
)

// Membership changes on whole clusters of Nodes over an InmemNetwork: a
// cluster grows one learner at a time, each promoted once caught up; a
// follower and the leader are removed; a change that would leave no
// working quorum is refused.

// join starts node id as a new member: it is added as a learner through
// node via, then started empty, to be sent the log.
func (c *inmemCluster) join(via, id uint64) {
	c.t.Helper()
	cfg := c.cfgs[via]
	cfg.ID = id
	cfg.Peers = map[uint64]string{id: fmt.Sprintf("node-%d", id)}
	cfg.Join = true
	c.cfgs[id] = cfg
	c.sms[id] = &memSM{}
	c.logs[id] = newSnapLog(c.sms[id], nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.node(via).AddLearner(ctx, &statev1.Member{Id: id, Name: fmt.Sprint(id), PeerAddress: cfg.Peers[id]}); err != nil {
		c.t.Fatalf("AddLearner(%d) through %d: %v", id, via, err)
	}
	c.start(id)
	c.mu.Lock()
	c.ids = append(c.ids, id)
	c.mu.Unlock()
}

// isVoter reports whether node id's configuration makes id a voter.
func isVoter(n *Node, id uint64) bool {
	for _, m := range n.Members() {
		if m.ID == id {
			return !m.Learner
		}
	}
	return false
}

// TestMembershipGrowOneToThreeWhileWriting: a one-node cluster grows to
// three while a writer keeps proposing; each new node joins as a learner,
// is sent the log, and is promoted by the leader once caught up; every
// write is acknowledged and every node applies the same log.
func TestMembershipGrowOneToThreeWhileWriting(t *testing.T) {
	c := startInmemCluster(t, 1, nil)
	c.waitLeader()
	stop := make(chan struct{})
	errs := make(chan error, 1)
	writes := 0
	go func() {
		defer close(errs)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.propose(1, 2*time.Second, fmt.Sprint("w", i)); err != nil {
				errs <- fmt.Errorf("write %d: %v", i, err)
				return
			}
			writes++
		}
	}()
	for _, id := range []uint64{2, 3} {
		c.join(1, id)
		waitFor(t, fmt.Sprintf("node %d promoted", id), func() bool { return isVoter(c.node(1), id) })
	}
	close(stop)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if writes == 0 {
		t.Fatal("no write went through while the cluster grew")
	}
	lead, _ := c.waitLeader()
	mustConverge(t, c, lead)
	for _, id := range c.ids {
		if got := len(c.node(id).Members()); got != 3 {
			t.Errorf("node %d knows %d members; want 3", id, got)
		}
	}
}

// mustConverge proposes once on lead and waits for every node to apply
// as far as lead did.
func mustConverge(t *testing.T, c *inmemCluster, lead uint64) {
	t.Helper()
	if _, err := c.propose(lead, 5*time.Second, "sync"); err != nil {
		t.Fatal(err)
	}
	want := c.node(lead).Status().Applied
	for _, id := range c.ids {
		waitFor(t, fmt.Sprintf("node %d applied %d", id, want), func() bool { return c.node(id).Status().Applied >= want })
	}
}

// TestMembershipRemoveFollowerAndLeader: a follower removed through
// another follower stops with ErrRemoved; the leader, removed through a
// follower too, hands leadership over first; the remaining members keep
// committing.
func TestMembershipRemoveFollowerAndLeader(t *testing.T) {
	c := startInmemCluster(t, 4, nil)
	lead, _ := c.waitLeader()
	var followers []uint64
	for _, id := range c.ids {
		if id != lead {
			followers = append(followers, id)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	gone := followers[0]
	if err := c.node(followers[1]).RemoveMember(ctx, gone); err != nil {
		t.Fatalf("RemoveMember(%d) through follower %d: %v", gone, followers[1], err)
	}
	waitFor(t, "the removed node to stop", func() bool {
		_, err := c.propose(gone, 50*time.Millisecond, "after removal")
		return errors.Is(err, ErrRemoved)
	})
	// Through a follower: the leader hands over, and the follower asks
	// the new leader (a lost answer of a removal that did happen counts as
	// done, not as "not a member").
	if err := c.node(followers[1]).RemoveMember(ctx, lead); err != nil {
		t.Fatalf("RemoveMember(leader %d) through %d: %v", lead, followers[1], err)
	}
	c.mu.Lock()
	c.ids = followers[1:]
	c.mu.Unlock()
	next, _ := c.waitLeader(followers[1:]...)
	if next == lead || next == gone {
		t.Fatalf("leader %d after removing %d and %d", next, gone, lead)
	}
	mustConverge(t, c, next)
	if got := len(c.node(next).Members()); got != 2 {
		t.Errorf("the leader knows %d members; want 2", got)
	}
}

// TestMembershipRefusesChangesThatLoseTheQuorum: with one of three voters
// cut off, removing another voter would leave one reachable voter of two:
// refused. A learner that has not caught up is not promoted on request.
func TestMembershipRefusesChangesThatLoseTheQuorum(t *testing.T) {
	c := startInmemCluster(t, 3, func(cfg *Config) { cfg.NoAutoPromote = true })
	lead, _ := c.waitLeader()
	var others []uint64
	for _, id := range c.ids {
		if id != lead {
			others = append(others, id)
		}
	}
	c.nw.Isolate(others[0])
	// CheckQuorum marks the cut-off voter inactive within an election
	// timeout.
	waitFor(t, "the leader to notice", func() bool { return !c.node(lead).activePeer(others[0]) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := c.node(lead).RemoveMember(ctx, others[1])
	if !errors.Is(err, ErrMembership) {
		t.Fatalf("removing %d with %d cut off: %v; want ErrMembership", others[1], others[0], err)
	}
	c.nw.Heal()

	// A learner that is not running cannot be caught up.
	if err := c.node(lead).AddLearner(ctx, &statev1.Member{Id: 9, Name: "9", PeerAddress: "node-9"}); err != nil {
		t.Fatal(err)
	}
	if err := c.node(lead).Promote(ctx, 9); !errors.Is(err, ErrMembership) {
		t.Fatalf("promoting a learner that never answered: %v; want ErrMembership", err)
	}
	if err := c.node(lead).Promote(ctx, 77); !errors.Is(err, ErrMembership) {
		t.Fatalf("promoting a non-member: %v; want ErrMembership", err)
	}
}

// TestMembershipRemovedWhileCutOffFindsOut: a member removed while cut off
// never receives the change (the leader stops replicating to it at once);
// once it can reach its peers again it asks them, learns that it was
// removed, and stops with ErrRemoved instead of campaigning forever.
func TestMembershipRemovedWhileCutOffFindsOut(t *testing.T) {
	c := startInmemCluster(t, 3, nil)
	lead, _ := c.waitLeader()
	gone := c.ids[0]
	if gone == lead {
		gone = c.ids[1]
	}
	c.nw.Isolate(gone)
	waitFor(t, "the leader to notice", func() bool { return !c.node(lead).activePeer(gone) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.node(lead).RemoveMember(ctx, gone); err != nil {
		t.Fatalf("RemoveMember(%d) while it is cut off: %v", gone, err)
	}
	before := c.node(gone).Status().Applied
	c.nw.Heal()
	waitFor(t, "the removed node to find out", func() bool {
		_, err := c.propose(gone, 50*time.Millisecond, "after removal")
		return errors.Is(err, ErrRemoved)
	})
	if got := c.node(gone).Status().Applied; got != before {
		t.Errorf("the removed node applied %d after the heal (was %d); it should hear nothing more", got, before)
	}
}

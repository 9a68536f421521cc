package raftnode

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/keystore-dev/keystore/entry"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// Membership changes are Raft conf changes, one change at a time, proposed
// by the leader (a follower forwards them). A node joins as a learner: it
// receives the log, a snapshot first if it is far behind, but does not
// vote, so adding it cannot cost the quorum anything. It becomes a voter
// (Promote) only once its log is close to the leader's, which the leader
// does by itself (promoteLoop). Removing a voter, or promoting a learner,
// is refused when the voters after the change that the leader hears from
// could not form a quorum of the new configuration (etcd's strict
// reconfiguration check): no change may leave a cluster that cannot
// commit. Every conf change carries the member it is about, with its
// addresses (entry.ConfChangeContext), so every replica learns them from
// the log, and the state machine keeps them beside the ConfState.

// ErrMembership is returned for a membership change that is refused: it
// names a member that does not exist or already does, it would leave the
// cluster without a working quorum, the learner is not caught up, or
// another change is still in flight. The error says which.
var ErrMembership = errors.New("raftnode: membership change refused")

// ErrRemoved is returned after this node learnt that it was removed from
// the cluster: it serves nothing any more. It is an ErrStopped.
var ErrRemoved = fmt.Errorf("%w: this node was removed from the cluster", ErrStopped)

// errDone marks a refusal of a change whose effect is there already: a
// removal of a non-member, a learner added again that is a voter. Asked
// again after an answer was lost, the change did happen.
var errDone = fmt.Errorf("%w", ErrMembership)

// errUnheard marks a refusal that news from the peers may lift: the
// voters left would not be heard from enough, or a learner not caught up.
var errUnheard = fmt.Errorf("%w", ErrMembership)

// promoteAt is how close a learner's log must be to the leader's to be
// promoted: its match index at least this fraction of the leader's (as
// etcd's).
const promoteAt = 0.9

// appliedConfChange is a conf change the node applied, at index.
type appliedConfChange struct {
	cc    raftpb.ConfChange
	index uint64
}

// appliedMembership follows an applied conf change: the transport learns
// of the member (or forgets it), the proposer waiting on it hears, and a
// node that applied its own removal stops.
func (n *Node) appliedMembership(c appliedConfChange) {
	ctx := entry.DecodeConfChangeContext(c.cc.Context)
	id := c.cc.NodeID
	switch c.cc.Type {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode, raftpb.ConfChangeUpdateNode:
		if m := ctx.GetMember(); m.GetId() == id && id != n.cfg.ID {
			// "" (not published yet): keeps the one it has
			n.trans.AddPeer(id, n.resolve(id, m.GetName(), m.GetPeerAddress()))
			n.peersMu.Lock()
			n.knownPeerIDs[id] = true
			n.peersMu.Unlock()
		}
	case raftpb.ConfChangeRemoveNode:
		if id == n.cfg.ID {
			n.logger.Warn("this node was removed from the cluster; it stops serving")
			n.removed.Store(true)
			defer n.halt()
		} else {
			n.trans.RemovePeer(id)
			n.peersMu.Lock()
			delete(n.knownPeerIDs, id)
			n.peersMu.Unlock()
		}
	}
	name := ctx.GetMember().GetName()
	if ml, ok := n.sm.(memberLister); ok && name == "" { // a promotion or removal names only the id
		for _, m := range ml.Members() {
			if m.GetId() == id {
				name = m.GetName()
			}
		}
	}
	n.logger.Info("membership changed", "change", c.cc.Type.String(), "member", fmt.Sprintf("%x", id),
		"name", name, "index", c.index)
	if rid := ctx.GetRequestId(); rid != 0 {
		n.mu.Lock()
		n.answer(rid, nil, c.index)
		n.mu.Unlock()
	}
}

// AddLearner adds m (its Id set by the caller, unique and never reused)
// as a learner and returns once the change is applied on the leader.
func (n *Node) AddLearner(ctx context.Context, m *statev1.Member) error {
	if m.GetId() == 0 || m.GetPeerAddress() == "" {
		return fmt.Errorf("%w: a member needs an id and a peer address", ErrMembership)
	}
	m.Learner = true
	return n.changeMembership(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeAddLearnerNode, NodeID: m.GetId()}, m)
}

// UpdateMember records m's addresses (its name and client address
// included) in the log, for a member that exists.
func (n *Node) UpdateMember(ctx context.Context, m *statev1.Member) error {
	return n.changeMembership(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeUpdateNode, NodeID: m.GetId()}, m)
}

// Promote makes learner id a voter, once its log is close to the leader's.
func (n *Node) Promote(ctx context.Context, id uint64) error {
	return n.changeMembership(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: id}, &statev1.Member{Id: id})
}

// RemoveMember removes member id. Removing the leader hands leadership to
// another voter first.
func (n *Node) RemoveMember(ctx context.Context, id uint64) error {
	if id == n.cfg.ID && n.IsLeader() {
		if err := n.TransferLeadership(ctx); err != nil {
			return err
		}
	}
	return n.changeMembership(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: id}, &statev1.Member{Id: id})
}

// changeMembership proposes cc (about member m) on the leader, forwarding
// it from a follower, and returns once it is applied there. A change lost
// with a leader is proposed again: each is idempotent (adding a learner
// twice, promoting a voter, removing a non-member change nothing).
func (n *Node) changeMembership(ctx context.Context, cc raftpb.ConfChange, m *statev1.Member) error {
	cc.Context = entry.ConfChangeContext(m, newRequestID())
	b, err := cc.Marshal()
	if err != nil {
		return err
	}
	backoff := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		select {
		case <-n.stopc:
			return n.stoppedErr()
		default:
		}
		n.mu.Lock()
		changed := n.leaderChanged
		n.mu.Unlock()
		lead := n.lead.Load()
		switch lead {
		case 0:
			err = errRetry
		case n.cfg.ID:
			_, err = n.proposeConfChangeLocal(ctx, cc)
		default:
			var index uint64
			index, err = n.trans.ForwardConfChange(ctx, lead, b)
			if err == nil && n.isOwnRemoval(cc) {
				// The leader applied this node's removal and replicates
				// to it no more: it would never apply it here.
				n.stopRemoved("the leader applied this node's removal")
				return nil
			}
			if err == nil {
				n.catchUp(ctx, index)
			} else if !errors.Is(err, errRetry) && !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrMembership) && !errors.Is(err, ErrStopped) {
				err = fmt.Errorf("%w: %v", errRetry, err)
			}
		}
		if attempt > 0 && errors.Is(err, errDone) {
			// An earlier attempt did it; its answer was lost.
			if n.isOwnRemoval(cc) && lead != n.cfg.ID {
				n.stopRemoved("the leader applied this node's removal")
			}
			return nil
		}
		if err == nil || !errors.Is(err, errRetry) {
			return err
		}
		select {
		case <-ctx.Done():
			return ErrTimeout
		case <-n.stopc:
			return n.stoppedErr()
		case <-changed:
		case <-time.After(backoff):
			backoff = min(2*backoff, 200*time.Millisecond)
		}
	}
}

func (n *Node) stoppedErr() error {
	if n.removed.Load() {
		return ErrRemoved
	}
	return ErrStopped
}

// proposeConfChangeLocal checks cc against the configuration this leader
// sees, proposes it and waits for it to apply here.
func (n *Node) proposeConfChangeLocal(ctx context.Context, cc raftpb.ConfChange) (uint64, error) {
	reqID := entry.DecodeConfChangeContext(cc.Context).GetRequestId()
	if reqID == 0 {
		return 0, fmt.Errorf("%w: a conf change without a request id", ErrMembership)
	}
	if cc.Type == raftpb.ConfChangeRemoveNode && cc.NodeID == n.cfg.ID {
		// The leader's own removal: hand leadership over first, so the
		// cluster is not left without a leader until an election; the
		// proposer asks the new leader.
		if err := n.TransferLeadership(ctx); err != nil {
			return 0, err
		}
		return 0, errRetry
	}
	// One change at a time. raft turns a conf change proposed before the
	// last one applied, or before a new leader applied the log it had when
	// elected, into an empty entry, and its proposer would wait for
	// nothing: so changes queue here, and each waits until this node
	// applied everything its log held when it came to propose.
	select {
	case n.confSem <- struct{}{}:
	case <-ctx.Done():
		return 0, ErrTimeout
	case <-n.stopc:
		return 0, n.stoppedErr()
	}
	defer func() { <-n.confSem }()
	st := n.rn.Status()
	if st.RaftState != raft.StateLeader {
		return 0, errRetry
	}
	if err := n.waitApplied(ctx, st.Progress[st.ID].Match); err != nil {
		return 0, err
	}
	ch := make(chan outcome, 1)
	n.mu.Lock()
	if n.halted {
		n.mu.Unlock()
		return 0, ErrStopped
	}
	// A leader hears from its followers only once it leads (a follower
	// hears from the leader alone): a check that fails for want of news
	// from peers is given a few heartbeats before it counts.
	for tries := 0; ; tries++ {
		err := checkConfChange(n.rn.Status(), cc, n.activePeer)
		if err == nil {
			break
		}
		if !errors.Is(err, errUnheard) || tries == 5 {
			n.mu.Unlock()
			return 0, err
		}
		n.mu.Unlock()
		select {
		case <-ctx.Done():
			return 0, ErrTimeout
		case <-n.stopc:
			return 0, n.stoppedErr()
		case <-time.After(n.cfg.TickInterval):
		}
		n.mu.Lock()
	}
	n.waiters[reqID] = ch
	changed := n.leaderChanged
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		if n.waiters[reqID] == ch {
			delete(n.waiters, reqID)
		}
		n.mu.Unlock()
	}()
	if err := n.core.ProposeConfChange(cc); err != nil {
		if errors.Is(err, raft.ErrStopped) {
			return 0, ErrStopped
		}
		return 0, errRetry
	}
	select {
	case o := <-ch:
		return o.index, o.err
	case <-changed:
		return 0, errRetry
	case <-ctx.Done():
		return 0, ErrTimeout
	case <-n.stopc:
		return 0, n.stoppedErr()
	}
}

// checkConfChange refuses a change that names no member, or one already
// there, a promotion of a learner that is behind, and any change after
// which the voters the leader hears from could not form a quorum.
func checkConfChange(st raft.Status, cc raftpb.ConfChange, heard func(uint64) bool) error {
	voters := st.Config.Voters.IDs()
	learners := st.Config.Learners
	id := cc.NodeID
	_, isVoter := voters[id]
	_, isLearner := learners[id]
	active := func(v uint64) bool { return v == st.ID || heard(v) }
	quorumAfter := func(next map[uint64]struct{}) error {
		up := 0
		for v := range next {
			if active(v) {
				up++
			}
		}
		if need := len(next)/2 + 1; up < need {
			return fmt.Errorf("%w: after the change %d of %d voters would be reachable, fewer than the %d a quorum needs",
				errUnheard, up, len(next), need)
		}
		return nil
	}
	switch cc.Type {
	case raftpb.ConfChangeAddLearnerNode:
		if isVoter {
			return fmt.Errorf("%w: %x is a voter already", errDone, id)
		}
		return nil // adding a learner again changes nothing
	case raftpb.ConfChangeAddNode:
		if isVoter {
			return nil
		}
		if !isLearner {
			return fmt.Errorf("%w: %x is not a member; add it as a learner first", ErrMembership, id)
		}
		if !caughtUp(st, id, heard) {
			return fmt.Errorf("%w: learner %x is not caught up with the leader's log yet", errUnheard, id)
		}
		next := map[uint64]struct{}{id: {}}
		for v := range voters {
			next[v] = struct{}{}
		}
		return quorumAfter(next)
	case raftpb.ConfChangeUpdateNode:
		if !isVoter && !isLearner {
			return fmt.Errorf("%w: %x is not a member", ErrMembership, id)
		}
		return nil
	case raftpb.ConfChangeRemoveNode:
		if !isVoter && !isLearner {
			return fmt.Errorf("%w: %x is not a member", errDone, id)
		}
		if isLearner {
			return nil
		}
		if len(voters) == 1 {
			return fmt.Errorf("%w: %x is the only voter", ErrMembership, id)
		}
		next := make(map[uint64]struct{}, len(voters))
		for v := range voters {
			if v != id {
				next[v] = struct{}{}
			}
		}
		return quorumAfter(next)
	default:
		return fmt.Errorf("%w: unsupported change %v", ErrMembership, cc.Type)
	}
}

// activePeer reports whether the leader heard from peer id within the
// last few heartbeats.
func (n *Node) activePeer(id uint64) bool {
	return n.heardWithin(id, 3*n.cfg.TickInterval*time.Duration(n.cfg.HeartbeatTicks))
}

// caughtUp reports whether learner id's log is close enough to the
// leader's for it to vote: it replicates (no snapshot under way), the
// leader heard from it lately, and it matches at least promoteAt of the
// leader's log.
func caughtUp(st raft.Status, id uint64, heard func(uint64) bool) bool {
	pr, ok := st.Progress[id]
	lead, lok := st.Progress[st.ID]
	if !ok || !lok {
		return false
	}
	return pr.State == tracker.StateReplicate && heard(id) && float64(pr.Match) >= promoteAt*float64(lead.Match)
}

// promoteLoop promotes, on the leader, each learner that has caught up.
func (n *Node) promoteLoop() {
	defer n.done.Done()
	if n.cfg.NoAutoPromote {
		return
	}
	t := time.NewTicker(n.cfg.TickInterval * 5)
	defer t.Stop()
	for {
		select {
		case <-n.stopc:
			return
		case <-t.C:
		}
		if !n.IsLeader() {
			continue
		}
		st := n.rn.Status()
		for id := range st.Config.Learners {
			if !caughtUp(st, id, n.activePeer) {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*n.cfg.TickInterval*time.Duration(n.cfg.ElectionTicks))
			err := n.Promote(ctx, id)
			cancel()
			if err != nil {
				n.logger.Info("promoting a learner failed; retrying", "member", fmt.Sprintf("%x", id), "err", err)
			} else {
				n.logger.Info("promoted a caught-up learner to voter", "member", fmt.Sprintf("%x", id))
			}
			break // one change at a time
		}
	}
}

// heardFrom notes that a frame from peer id arrived now.
func (n *Node) heardFrom(id uint64) {
	n.heardMu.RLock()
	at, ok := n.heard[id]
	n.heardMu.RUnlock()
	if !ok {
		n.heardMu.Lock()
		if n.heard == nil {
			n.heard = make(map[uint64]*atomic.Int64)
		}
		if at, ok = n.heard[id]; !ok {
			at = new(atomic.Int64)
			n.heard[id] = at
		}
		n.heardMu.Unlock()
	}
	at.Store(time.Now().UnixNano())
}

// heardWithin reports whether a frame from id arrived within d.
func (n *Node) heardWithin(id uint64, d time.Duration) bool {
	n.heardMu.RLock()
	at, ok := n.heard[id]
	n.heardMu.RUnlock()
	return ok && time.Since(time.Unix(0, at.Load())) < d
}

// TransferLeadership hands leadership, if this node has it, to the voter
// whose log is most complete among those it heard from in the last few
// heartbeats, and returns once another node leads: a live transferee that
// is caught up takes over within a round trip or two. It gives up
// (ErrTimeout) after five ticks, or when ctx ends: the transferee may be
// stopping too, and raft goes on trying until an election timeout. A node
// that does not lead, or hears from no other voter, returns at once.
func (n *Node) TransferLeadership(ctx context.Context) error {
	if !n.IsLeader() {
		return nil
	}
	st := n.rn.Status()
	var to, best uint64
	for v := range st.Config.Voters.IDs() {
		pr, ok := st.Progress[v]
		if v == n.cfg.ID || !ok || !n.activePeer(v) {
			continue
		}
		if to == 0 || pr.Match > best {
			to, best = v, pr.Match
		}
	}
	if to == 0 {
		return nil
	}
	n.logger.Info("transferring leadership", "to", fmt.Sprintf("%x", to))
	n.core.TransferLeader(to)
	giveUp := time.After(5 * n.cfg.TickInterval)
	for n.IsLeader() {
		n.mu.Lock()
		changed := n.leaderChanged
		n.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return ErrTimeout
		case <-giveUp:
			return ErrTimeout
		case <-n.stopc:
			return n.stoppedErr()
		case <-time.After(n.cfg.TickInterval):
		}
	}
	return nil
}

// Members returns the members as this node's raft configuration has them
// (voters and learners) with, on the leader, how far each one's log is
// known to match.
func (n *Node) Members() []MemberStatus {
	st := n.rn.Status()
	var out []MemberStatus
	for id := range st.Config.Voters.IDs() {
		out = append(out, MemberStatus{ID: id, Match: st.Progress[id].Match})
	}
	for id := range st.Config.Learners {
		out = append(out, MemberStatus{ID: id, Learner: true, Match: st.Progress[id].Match})
	}
	return out
}

// MemberStatus is one member in Members.
type MemberStatus struct {
	ID      uint64
	Learner bool
	// Match is how far its log is known to match the leader's (0 unless
	// this node leads).
	Match uint64
}

// isOwnRemoval reports whether cc removes this node.
func (n *Node) isOwnRemoval(cc raftpb.ConfChange) bool {
	return cc.Type == raftpb.ConfChangeRemoveNode && cc.NodeID == n.cfg.ID
}

// stopRemoved stops this node, removed from the cluster without applying
// its removal (why says how it learnt of it), as applying it would.
func (n *Node) stopRemoved(why string) {
	n.logger.Warn(why + ": this node was removed from the cluster; it stops serving")
	n.removed.Store(true)
	n.halt()
}

// removalLoop finds out whether this node was removed while it could not
// hear of it. The leader stops replicating to a member the moment it
// applies its removal, so the removed node never learns that the change
// committed: it only stops hearing from a leader. When it has known no
// leader for a while, it asks its peers (Hello); one that has applied at
// least as much as this node and does not count it a member applied its
// removal (a peer that applied this node's own addition would count it),
// and the node stops with ErrRemoved, as it would had it applied the
// removal itself.
func (n *Node) removalLoop() {
	defer n.done.Done()
	timeout := n.cfg.TickInterval * time.Duration(n.cfg.ElectionTicks)
	t := time.NewTicker(2 * timeout)
	defer t.Stop()
	var leaderless time.Time
	for {
		select {
		case <-n.stopc:
			return
		case <-t.C:
		}
		if n.lead.Load() != 0 {
			leaderless = time.Time{}
			continue
		}
		if leaderless.IsZero() {
			leaderless = time.Now()
			continue
		}
		if time.Since(leaderless) < 2*timeout {
			continue
		}
		if n.askRemoved(timeout) {
			n.stopRemoved("a peer that applied more of the log no longer counts this node a member")
			return
		}
	}
}

// askRemoved asks each peer this node knows whether it is still a member.
func (n *Node) askRemoved(timeout time.Duration) bool {
	applied := n.sm.AppliedIndex()
	st := n.rn.Status()
	ids := st.Config.Voters.IDs()
	for id := range st.Config.Learners {
		ids[id] = struct{}{}
	}
	for id := range ids {
		if id == n.cfg.ID {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		h, err := n.trans.Hello(ctx, id)
		cancel()
		if err == nil && !h.Member && h.Applied >= applied && applied > 0 {
			return true
		}
	}
	return false
}

// Done is closed once the node stops serving: after Stop, a storage
// failure, or its removal from the cluster (Removed).
func (n *Node) Done() <-chan struct{} { return n.stopc }

// Removed reports whether the node stopped because it was removed from the
// cluster.
func (n *Node) Removed() bool { return n.removed.Load() }

// resolve is the address to dial member id at (see Config.Resolve).
func (n *Node) resolve(id uint64, name, addr string) string {
	if n.cfg.Resolve == nil {
		return addr
	}
	return n.cfg.Resolve(id, name, addr)
}

// RefreshPeers asks Config.Resolve again for the address of every member
// and dials the ones that changed: the server calls it when gossip learnt
// a member's new address.
func (n *Node) RefreshPeers() {
	if n.cfg.Resolve == nil {
		return
	}
	addrs, names := make(map[uint64]string), make(map[uint64]string)
	if ml, ok := n.sm.(memberLister); ok {
		for _, m := range ml.Members() {
			addrs[m.GetId()], names[m.GetId()] = m.GetPeerAddress(), m.GetName()
		}
	}
	n.peersMu.Lock()
	ids := slices.Collect(maps.Keys(n.knownPeerIDs))
	n.peersMu.Unlock()
	for _, id := range ids {
		if id != n.cfg.ID {
			n.trans.AddPeer(id, n.resolve(id, names[id], addrs[id]))
		}
	}
}

// syncPeers makes the transport's peers the members of cs, at the
// addresses the state machine has for them (or Config.Routes'), after a
// snapshot replaced the state: a member the snapshot no longer names is
// forgotten, one it adds is dialled.
func (n *Node) syncPeers(cs raftpb.ConfState) {
	addrs, names := make(map[uint64]string), make(map[uint64]string)
	if ml, ok := n.sm.(memberLister); ok {
		for _, m := range ml.Members() {
			addrs[m.GetId()], names[m.GetId()] = m.GetPeerAddress(), m.GetName()
		}
	}
	members := make(map[uint64]bool)
	for _, ids := range [][]uint64{cs.Voters, cs.Learners, cs.VotersOutgoing, cs.LearnersNext} {
		for _, id := range ids {
			members[id] = true
		}
	}
	for id := range members {
		if id == n.cfg.ID {
			continue
		}
		n.trans.AddPeer(id, n.resolve(id, names[id], addrs[id])) // "" keeps the address it has
	}
	n.peersMu.Lock()
	known := n.knownPeerIDs
	n.knownPeerIDs = members
	n.peersMu.Unlock()
	for id := range known {
		if !members[id] && id != n.cfg.ID {
			n.trans.RemovePeer(id)
		}
	}
}

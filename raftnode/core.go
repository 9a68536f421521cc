package raftnode

import (
	"context"
	"sync"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// raftCore is what Node asks of raft. core implements it over raft.RawNode;
// tests stand in for parts of it.
type raftCore interface {
	// Propose appends one entry per data to the leader's log, all or
	// none, or fails at once: it never waits (raft.ErrProposalDropped when
	// this node does not lead, ErrOverloaded when it leads but its
	// uncommitted tail is full). No data: nothing, and no error.
	Propose(data ...[]byte) error
	// StepFrame steps msgs (one frame from a peer) under one lock and
	// wakes the run loop to pump.
	StepFrame(msgs []raftpb.Message) error
	ReadIndex(ctx context.Context, rctx []byte) error
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
	ApplyConfChange(cc raftpb.ConfChangeI) *raftpb.ConfState
	Status() raft.Status
	// Pump handles the Readies of what was stepped, or sees that the run
	// loop does (see core.Pump).
	Pump()
}

// core is raft.RawNode behind a mutex. It replaces raft.Node, whose own
// goroutine every proposal, received message and Ready crossed (a hand-off
// each way, each a goroutine wake-up). Here whoever steps raft then pumps:
// if no goroutine is handling a Ready, it handles some itself; otherwise it
// leaves, and the goroutine handling one sees its step, because it checks
// for a Ready under the lock before it lets go. Proposers and read rounds
// pump themselves, but handle at most callerReadies Readies per call, then
// wake the run loop for the rest: under load raft has a new Ready after
// every one, and a caller that handled them until none was left would wait
// for everyone's fsyncs, for as long as the burst lasts, with its own
// result and deadline waiting (docs/performance-notes.md). The run
// loop (ticks, and wake-ups) handles Readies until raft has none. A peer
// connection only steps and wakes the run loop to pump, so that it keeps
// reading while a Ready is being persisted. So Readies are handled one at
// a time, in order, as by a single goroutine, but mostly without waking
// one. A Ready is handled with the lock released: raft may be stepped
// meanwhile, as raft.Node allows between Ready and Advance.
//
// NB: whoever stops handling while raft still has a Ready must wake the run
// loop (signal); that is what guarantees nothing stepped is left unhandled.
type core struct {
	mu       sync.Mutex
	cond     sync.Cond // signalled when handling ends
	rn       *raft.RawNode
	stopped  bool
	handling bool // a goroutine is between Ready and Advance

	// callerReadies bounds the Readies one Pump call handles (negative:
	// no bound); the run loop handles the rest. Two by default: the Ready
	// holding the caller's own entries (the leader's fsync and appends)
	// and, usually, the one after (Config.CallerReadies).
	callerReadies int

	handle func(raft.Ready) error // persist, send, apply
	fail   func(error)            // handle failed: the node stops
	// wake has room for one signal: a peer message was stepped and the
	// run loop should pump.
	wake chan struct{}
	// stats counts proposals and snapshot sends (metrics.go).
	stats coreStats
}

func newCore(rn *raft.RawNode, callerReadies int, handle func(raft.Ready) error, fail func(error)) *core {
	c := &core{rn: rn, callerReadies: callerReadies, handle: handle, fail: fail, wake: make(chan struct{}, 1)}
	c.cond.L = &c.mu
	return c
}

// signal asks the run loop to pump.
func (c *core) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Pump handles up to callerReadies Readies, unless another goroutine is
// handling them (which then sees what the caller stepped); if raft still
// has one after that, it wakes the run loop to handle the rest.
func (c *core) Pump() { c.pump(c.callerReadies) }

// pumpAll handles Readies until raft has none: the run loop's pump.
func (c *core) pumpAll() { c.pump(-1) }

// pump handles at most limit Readies (no bound if negative).
func (c *core) pump(limit int) {
	c.mu.Lock()
	if c.handling {
		c.mu.Unlock()
		return
	}
	c.handling = true
	for !c.stopped && c.rn.HasReady() {
		if limit == 0 {
			// Hand over: the run loop takes the rest (it may find another
			// caller handling them by then, which is as good).
			c.handling = false
			c.cond.Broadcast()
			c.mu.Unlock()
			c.signal()
			return
		}
		limit--
		rd := c.rn.Ready()
		c.mu.Unlock()
		err := c.handle(rd)
		c.mu.Lock()
		if err != nil {
			c.stopped = true
			c.handling = false
			c.cond.Broadcast()
			c.mu.Unlock()
			c.fail(err)
			return
		}
		c.rn.Advance(rd)
	}
	c.handling = false
	c.cond.Broadcast()
	c.mu.Unlock()
}

// Propose appends an entry per data to the log if this node leads;
// raft.ErrProposalDropped otherwise, and ErrOverloaded when this node leads
// but raft dropped the entries because its uncommitted tail would exceed
// MaxUncommittedBytes (no quorum keeps up). It never blocks on raft. The
// caller pumps once it has proposed what it had.
//
// The entries go to raft in one step (raft.Node.Propose's message with all
// of them), so the leader sends each follower one append for all of them,
// the follower answers once, and the commit index moves once: proposed one
// by one, each entry took its own append per follower, acknowledgement
// and commit broadcast.
func (c *core) Propose(data ...[]byte) error {
	if len(data) == 0 {
		return nil // raft panics on a proposal without entries
	}
	ents := make([]raftpb.Entry, len(data))
	for i := range data {
		ents[i].Data = data[i]
	}
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return raft.ErrStopped
	}
	err := c.rn.Step(raftpb.Message{Type: raftpb.MsgProp, Entries: ents})
	c.stats.proposed(data, err)
	if err == raft.ErrProposalDropped {
		// raft says dropped both when this node does not lead (or hands
		// leadership over) and when the leader's uncommitted tail is full:
		// only the first is worth retrying at once.
		if st := c.rn.BasicStatus(); st.RaftState == raft.StateLeader && st.LeadTransferee == raft.None {
			err = ErrOverloaded
		}
	}
	c.mu.Unlock()
	return err
}

// StepFrame steps a peer's frame and wakes the run loop to pump: a peer
// connection that handled the Ready itself would not read its next frames
// meanwhile, and those would miss this Ready's fsync. (A leader's reader
// pumping itself, its Readies being mostly acknowledgements that need no
// fsync, was tried and was no better: docs/performance-notes.md.) Like
// raft.Node.Step, it reports only a stopped node: raft's refusal of a
// message (a local type from the network, a response from a non-member) is
// not the sender's problem.
func (c *core) StepFrame(msgs []raftpb.Message) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return raft.ErrStopped
	}
	for i := range msgs {
		_ = c.rn.Step(msgs[i])
	}
	c.mu.Unlock()
	c.signal()
	return nil
}

// ReadIndex asks for a read index; the answer comes in a Ready's ReadStates.
func (c *core) ReadIndex(_ context.Context, rctx []byte) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return raft.ErrStopped
	}
	c.rn.ReadIndex(rctx)
	c.mu.Unlock()
	c.Pump()
	return nil
}

func (c *core) ReportUnreachable(id uint64) {
	c.mu.Lock()
	if !c.stopped {
		c.rn.ReportUnreachable(id)
	}
	c.mu.Unlock()
	c.signal()
}

func (c *core) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	c.mu.Lock()
	if !c.stopped {
		c.rn.ReportSnapshot(id, status)
		c.stats.snapshotSent(status)
	}
	c.mu.Unlock()
	c.signal()
}

func (c *core) ApplyConfChange(cc raftpb.ConfChangeI) *raftpb.ConfState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rn.ApplyConfChange(cc)
}

func (c *core) Status() raft.Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rn.Status()
}

// tick ticks raft and pumps until raft has no Ready: the run loop's.
func (c *core) tick() {
	c.mu.Lock()
	if !c.stopped {
		c.rn.Tick()
	}
	c.mu.Unlock()
	c.pumpAll()
}

// stop makes every later call a no-op (or raft.ErrStopped), once the Ready
// being handled, if any, is done.
func (c *core) stop() {
	c.mu.Lock()
	c.stopped = true
	for c.handling {
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// ProposeConfChange proposes cc if this node leads; raft.ErrProposalDropped
// otherwise. raft itself turns a second conf change proposed before the
// first applied into an empty entry; the node checks before it proposes
// (see Node.ChangeMembership).
func (c *core) ProposeConfChange(cc raftpb.ConfChange) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return raft.ErrStopped
	}
	err := c.rn.ProposeConfChange(cc)
	c.mu.Unlock()
	c.Pump()
	return err
}

// TransferLeader asks raft to hand leadership to id.
func (c *core) TransferLeader(id uint64) {
	c.mu.Lock()
	if !c.stopped {
		c.rn.TransferLeader(id)
	}
	c.mu.Unlock()
	c.signal()
}

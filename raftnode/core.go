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
	// this node does not lead). No data: nothing, and no error.
	Propose(data ...[]byte) error
	// StepFrame steps msgs (one frame from a peer) under one lock and
	// wakes the run loop to pump.
	StepFrame(msgs []raftpb.Message) error
	ReadIndex(ctx context.Context, rctx []byte) error
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
	ApplyConfChange(cc raftpb.ConfChangeI) *raftpb.ConfState
	Status() raft.Status
	// Pump handles the Readies of what was stepped (see core.Pump).
	Pump()
}

// core is raft.RawNode behind a mutex. It replaces raft.Node, whose own
// goroutine every proposal, received message and Ready crossed (a hand-off
// each way, each a goroutine wake-up). Here whoever steps raft then pumps:
// if no goroutine is handling a Ready, it handles them itself until raft
// has none left; otherwise it leaves, and the goroutine handling one sees
// its step, because it checks for a Ready under the lock before it lets go.
// Proposers, the ticker and read rounds pump themselves; a peer connection
// only steps and wakes the run loop to pump, so that it keeps reading while
// a Ready is being persisted. So Readies are handled one at a time, in order,
// as by a single goroutine, but mostly without waking one. A Ready is
// handled with the lock released: raft may be stepped meanwhile, as
// raft.Node allows between Ready and Advance.
type core struct {
	mu       sync.Mutex
	cond     sync.Cond // signalled when handling ends
	rn       *raft.RawNode
	stopped  bool
	handling bool // a goroutine is between Ready and Advance

	handle func(raft.Ready) error // persist, send, apply
	fail   func(error)            // handle failed: the node stops
	// wake has room for one signal: a peer message was stepped and the
	// run loop should pump.
	wake chan struct{}
}

func newCore(rn *raft.RawNode, handle func(raft.Ready) error, fail func(error)) *core {
	c := &core{rn: rn, handle: handle, fail: fail, wake: make(chan struct{}, 1)}
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

// Pump handles Readies until raft has none, unless another goroutine is
// handling them (which then sees what the caller stepped).
func (c *core) Pump() {
	c.mu.Lock()
	if c.handling {
		c.mu.Unlock()
		return
	}
	c.handling = true
	for !c.stopped && c.rn.HasReady() {
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
// raft.ErrProposalDropped otherwise. It never blocks on raft. The caller
// pumps once it has proposed what it had.
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
	c.mu.Unlock()
	return err
}

// StepFrame steps a peer's frame and wakes the run loop to pump: a peer
// connection that handled the Ready itself would not read its next frames
// meanwhile, and those would miss this Ready's fsync. (A leader's reader
// pumping itself, its Readies being mostly acknowledgements that need no
// fsync, measured no better at one client: p50 0.60 against 0.55 ms.) Like
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

func (c *core) tick() {
	c.mu.Lock()
	if !c.stopped {
		c.rn.Tick()
	}
	c.mu.Unlock()
	c.Pump()
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

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
	Propose(ctx context.Context, data []byte) error
	Step(ctx context.Context, m raftpb.Message) error
	ReadIndex(ctx context.Context, rctx []byte) error
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
	ApplyConfChange(cc raftpb.ConfChangeI) *raftpb.ConfState
	Status() raft.Status
}

// core is raft.RawNode behind a mutex. It replaces raft.Node, whose own
// goroutine every proposal, received message and Ready crossed (a hand-off
// each way, each a goroutine wake-up): here the caller steps raft itself,
// under the lock, and wakes the run loop, which takes the Ready, handles it
// with the lock released (raft may be stepped meanwhile, as raft.Node
// allows between Ready and Advance), and advances.
type core struct {
	mu      sync.Mutex
	rn      *raft.RawNode
	stopped bool
	// wake has room for one signal: something was stepped, look for a
	// Ready.
	wake chan struct{}
}

func newCore(rn *raft.RawNode) *core {
	return &core{rn: rn, wake: make(chan struct{}, 1)}
}

func (c *core) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Propose appends data to the log if this node leads; raft.ErrProposalDropped
// otherwise. It never blocks on raft.
func (c *core) Propose(_ context.Context, data []byte) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return raft.ErrStopped
	}
	err := c.rn.Propose(data)
	c.mu.Unlock()
	if err == nil {
		c.signal()
	}
	return err
}

// Step hands raft a message from a peer. Like raft.Node.Step, it reports
// only a stopped node: raft's refusal of a message (a local type from the
// network, a response from a non-member) is not the sender's problem.
func (c *core) Step(_ context.Context, m raftpb.Message) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return raft.ErrStopped
	}
	_ = c.rn.Step(m)
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
	c.signal()
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
}

// ready returns the next Ready, if raft has one.
func (c *core) ready() (raft.Ready, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped || !c.rn.HasReady() {
		return raft.Ready{}, false
	}
	return c.rn.Ready(), true
}

// advance tells raft the Ready is handled: persisted, sent and applied.
func (c *core) advance(rd raft.Ready) {
	c.mu.Lock()
	if !c.stopped {
		c.rn.Advance(rd)
	}
	c.mu.Unlock()
}

// stop makes every later call a no-op (or raft.ErrStopped).
func (c *core) stop() {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
}

package raftnode

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/keystore-dev/keystore/entry"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
)

// errRetry marks a proposal attempt that did not get an answer but may be
// tried again with the same request id: no leader, the proposal was dropped,
// the leader changed while it waited, or the forward failed in transit.
var errRetry = errors.New("raftnode: retry")

// Propose replicates command and returns the state machine's result for it.
// requestID names the logical request (retries of it keep the id, so the
// state machine can recognise a repeat); 0 draws a fresh one.
// It returns only after the entry is committed (in the synced log of a
// majority) and applied on the leader. Any node may call it: a follower
// forwards to the leader. When the leader changes mid-flight the proposal is
// sent again with the same request id, which the state machine recognises,
// so the caller never sees "not leader". It returns ErrTimeout when ctx ends
// first.
func (n *Node) Propose(ctx context.Context, requestID uint64, command []byte) (*statev1.Result, error) {
	if requestID == 0 {
		requestID = newRequestID()
	}
	return n.propose(ctx, requestID, command)
}

func (n *Node) propose(ctx context.Context, reqID uint64, command []byte) (*statev1.Result, error) {
	backoff := 5 * time.Millisecond
	for {
		select {
		case <-n.stopc: // stopped, or failed: nothing to forward either
			return nil, n.stoppedErr()
		default:
		}
		n.mu.Lock()
		changed := n.leaderChanged
		n.mu.Unlock()
		var (
			res *statev1.Result
			err error
		)
		switch lead := n.lead.Load(); lead {
		case 0:
			err = errRetry
		case n.cfg.ID:
			res, _, err = n.proposeLocal(ctx, reqID, command)
		default:
			var index uint64
			res, index, err = n.trans.Forward(ctx, lead, reqID, command)
			if err == nil {
				n.catchUp(ctx, index)
			} else if !errors.Is(err, errRetry) && !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrOverloaded) && !errors.Is(err, ErrStopped) && !errors.Is(err, ErrRefused) {
				err = fmt.Errorf("%w: %v", errRetry, err)
			}
		}
		if err == nil || !errors.Is(err, errRetry) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, ErrTimeout
		case <-n.stopc:
			return nil, n.stoppedErr()
		case <-changed:
		case <-time.After(backoff):
			backoff = min(2*backoff, 200*time.Millisecond)
		}
	}
}

// forwardCatchUp bounds how long a forwarding node waits to apply the
// entry its forwarded proposal went into: the write is committed either
// way, and a node cut off from the leader right after must not turn it
// into an error.
const forwardCatchUp = 500 * time.Millisecond

// catchUp waits, briefly, until this node has applied index: then a STALE
// read here sees the write it forwarded (the leader sends the commit
// before it answers, see Forward).
func (n *Node) catchUp(ctx context.Context, index uint64) {
	if index == 0 || n.sm.AppliedIndex() >= index {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, forwardCatchUp)
	defer cancel()
	_ = n.waitApplied(ctx, index)
}

// proposeLocal proposes on this node, which believes it is the leader, and
// waits for the entry to apply here. Concurrent proposals on different
// records share an entry (see packer).
func (n *Node) proposeLocal(ctx context.Context, reqID uint64, command []byte) (*statev1.Result, uint64, error) {
	p := &pending{Proposal: entry.NewProposal(reqID, command), ch: make(chan outcome, 1)}
	n.mu.Lock()
	if n.halted {
		n.mu.Unlock()
		return nil, 0, ErrStopped
	}
	n.waiters[reqID] = p.ch
	changed := n.leaderChanged
	n.lastProposal = time.Now()
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		if n.waiters[reqID] == p.ch {
			delete(n.waiters, reqID)
		}
		n.mu.Unlock()
	}()
	n.submit(p)
	select {
	case o := <-p.ch:
		return o.res, o.index, o.err
	case <-changed:
		// The entry may be lost with the old leader's term, or may still
		// commit; proposing again with the same id is safe either way.
		return nil, 0, errRetry
	case <-ctx.Done():
		return nil, 0, ErrTimeout
	case <-n.stopc:
		return nil, 0, n.stoppedErr()
	}
}

// idleTickLoop appends an empty entry when the leader has proposed nothing
// for IdleTickInterval, so log time, and with it lease and record expiry,
// moves on an idle cluster.
func (n *Node) idleTickLoop() {
	defer n.done.Done()
	if n.cfg.IdleTickInterval < 0 {
		return
	}
	t := time.NewTicker(n.cfg.IdleTickInterval / 2)
	defer t.Stop()
	for {
		select {
		case <-n.stopc:
			return
		case <-t.C:
		}
		if n.lead.Load() != n.cfg.ID {
			continue
		}
		n.mu.Lock()
		idle := time.Since(n.lastProposal) >= n.cfg.IdleTickInterval
		if idle {
			n.lastProposal = time.Now()
		}
		n.mu.Unlock()
		if !idle {
			continue
		}
		if n.rn.Propose(entry.Tick(n.clock.stamp())) == nil { // best effort: the next interval tries again
			n.rn.Pump()
		}
	}
}

func newRequestID() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

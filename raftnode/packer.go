package raftnode

import (
	"errors"
	"sync"

	"github.com/keystore-dev/keystore/entry"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
)

// outcome is what a proposer waiting on the leader hears: the apply result,
// or why its entry never made it into the log (errRetry, ErrOverloaded,
// ErrStopped).
type outcome struct {
	res   *statev1.Result
	index uint64 // of the entry that carried the proposal
	err   error
}

// pending is one proposal waiting to be put into the log by the packer.
type pending struct {
	entry.Proposal
	// ch has room for one outcome; it is only ever sent to, never
	// closed, and without blocking: the first outcome wins (see Node.halt).
	ch chan outcome
}

// packer turns proposals queued on the leader into log entries, packing
// concurrent proposals on different records into one entry (by the rules
// of entry.Packer): one raft proposal, one log key and one envelope for
// all of them, instead of one each. It is a combiner, not a goroutine: the proposer that finds it idle
// drains the queue itself (a lone proposer goes straight through, no hand-
// off), and whoever else arrives meanwhile only queues.
type packer struct {
	mu    sync.Mutex
	queue []*pending
	busy  bool
}

// submit queues p and, if no one is draining, drains the queue: at most
// Config.PackRounds rounds on the caller's time, then a goroutine takes
// over the rest.
func (n *Node) submit(p *pending) {
	pk := &n.pack
	pk.mu.Lock()
	pk.queue = append(pk.queue, p)
	if pk.busy {
		pk.mu.Unlock()
		return
	}
	pk.busy = true
	pk.mu.Unlock()
	if !n.drain(n.cfg.PackRounds) {
		go n.drain(-1)
	}
}

// drain proposes what is queued, at most rounds times (no bound if
// negative). It reports whether it emptied the queue, leaving the packer
// idle; if not, the caller must see that someone drains the rest.
func (n *Node) drain(rounds int) bool {
	pk := &n.pack
	pk.mu.Lock()
	defer pk.mu.Unlock()
	for ; len(pk.queue) > 0; rounds-- {
		if rounds == 0 {
			return false
		}
		q := pk.queue
		pk.queue = nil
		pk.mu.Unlock()
		n.proposePacked(q)
		pk.mu.Lock()
	}
	pk.busy = false
	return true
}

// proposePacked cuts q, in order, into entries under the packing rules
// (entry.Packer) and proposes them together.
func (n *Node) proposePacked(q []*pending) {
	var (
		data [][]byte
		cuts [][]*pending // the proposals of each entry in data
	)
	add := func(ps []*pending) {
		props := make([]*entry.Proposal, len(ps))
		for i, p := range ps {
			props[i] = &p.Proposal
		}
		d, err := entry.Encode(n.clock.stamp(), props)
		if err != nil {
			fail(ps, errRetry)
			return
		}
		data, cuts = append(data, d), append(cuts, ps)
	}
	pk := entry.NewPacker(entry.Limits{MaxProposals: n.cfg.MaxPackProposals, MaxBytes: n.cfg.MaxPackBytes})
	start := 0
	for i, p := range q {
		if !pk.Fits(&p.Proposal) {
			add(q[start:i])
			pk.Reset()
			start = i
		}
		pk.Add(&p.Proposal)
		if p.Key == "" { // travels alone
			add(q[start : i+1])
			pk.Reset()
			start = i + 1
		}
	}
	if start < len(q) {
		add(q[start:])
	}
	if len(data) > 0 {
		if err := n.rn.Propose(data...); err != nil {
			switch {
			case errors.Is(err, raft.ErrStopped):
				err = ErrStopped
			case errors.Is(err, ErrOverloaded):
				// This node leads but no quorum keeps up: retrying at
				// once would only hold more in memory.
			default:
				// Dropped (this node is no longer leader): they may be
				// proposed again under the same request ids.
				err = errRetry
			}
			for _, ps := range cuts {
				fail(ps, err)
			}
		}
	}
	n.rn.Pump()
}

// fail tells each proposer in ps that its proposal did not make it into
// the log (unless it heard something already, e.g. ErrStopped).
func fail(ps []*pending, err error) {
	for _, p := range ps {
		select {
		case p.ch <- outcome{err: err}:
		default:
		}
	}
}

package raftnode

import (
	"errors"
	"sync"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"google.golang.org/protobuf/proto"
)

// Packing bounds: a packed entry holds at most this many proposals and
// bytes of commands (a larger command travels alone).
const (
	maxPackProposals = 1024
	maxPackBytes     = 256 << 10
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
	id     uint64
	cmd    []byte
	key    string // the record it names; "" travels alone
	grants bool   // it may grant a token (a Claim)
	// ch has room for one outcome; it is only ever sent to, never
	// closed, and without blocking: the first outcome wins (see Node.halt).
	ch chan outcome
}

// packer turns proposals queued on the leader into log entries, packing
// concurrent proposals on different records into one entry: one raft
// proposal, one log key and one envelope for all of them, instead of one
// each. It is a combiner, not a goroutine: the proposer that finds it idle
// drains the queue itself (a lone proposer goes straight through, no hand-
// off), and whoever else arrives meanwhile only queues.
type packer struct {
	mu    sync.Mutex
	queue []*pending
	busy  bool
}

// submit queues p and, if no one is draining, drains the queue: at most two
// rounds on the caller's time, then a goroutine takes over the rest.
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
	if !n.drain(2) {
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

// proposePacked cuts q, in order, into entries and proposes them together.
// A token is the index of the entry that granted it, so an entry never
// holds two proposals naming the same record, nor two that may grant a
// token: every token stays unique.
func (n *Node) proposePacked(q []*pending) {
	var (
		data [][]byte
		cuts [][]*pending // the proposals of each entry in data
	)
	add := func(ps []*pending) {
		d, err := n.encodeEntry(ps)
		if err != nil {
			fail(ps, errRetry)
			return
		}
		data, cuts = append(data, d), append(cuts, ps)
	}
	seen := make(map[string]struct{}, len(q))
	start, size, grants := 0, 0, false
	for i, p := range q {
		_, dup := seen[p.key]
		if i > start && (p.key == "" || dup || (p.grants && grants) || i-start == maxPackProposals || size+len(p.cmd) > maxPackBytes) {
			add(q[start:i])
			clear(seen)
			start, size, grants = i, 0, false
		}
		if p.key == "" {
			add(q[i : i+1])
			start = i + 1
			continue
		}
		seen[p.key] = struct{}{}
		size += len(p.cmd)
		grants = grants || p.grants
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

// encodeEntry encodes the entry holding ps (the single-proposal form for
// one).
func (n *Node) encodeEntry(ps []*pending) ([]byte, error) {
	env := &statev1.Entry{Time: n.clock.stamp()}
	if len(ps) == 1 {
		env.RequestId, env.Command = ps[0].id, ps[0].cmd
	} else {
		env.Proposals = make([]*statev1.Proposal, len(ps))
		for i, p := range ps {
			env.Proposals[i] = &statev1.Proposal{RequestId: p.id, Command: p.cmd}
		}
	}
	return proto.Marshal(env)
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

package raftnode

import (
	"context"
	"encoding/binary"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
)

// Linearizable reads. A reader asks for a read index: the leader's commit
// index, confirmed by a heartbeat round with a quorum (raft's ReadOnlySafe,
// never a lease). Once this node has applied up to it, a local read sees
// every write acknowledged before the read began. Readers that arrive while
// a round is in flight share the next round, so a burst of reads costs one
// round.

// readQueue batches readers into ReadIndex rounds.
type readQueue struct {
	mu      sync.Mutex
	waiting []chan uint64 // readers for the next round
	kick    chan struct{}
	// inflight maps a round's request context to its readers' channel.
	inflight map[uint64]chan uint64
}

func (q *readQueue) init() {
	q.kick = make(chan struct{}, 1)
	q.inflight = make(map[uint64]chan uint64)
}

// resolve delivers the read index of a completed round.
func (q *readQueue) resolve(rs raft.ReadState) {
	if len(rs.RequestCtx) != 8 {
		return
	}
	id := binary.BigEndian.Uint64(rs.RequestCtx)
	q.mu.Lock()
	ch, ok := q.inflight[id]
	delete(q.inflight, id)
	q.mu.Unlock()
	if ok {
		ch <- rs.Index
	}
}

// ReadIndex returns once this node has applied every entry committed before
// the call, as confirmed by a quorum. It returns ErrTimeout if no quorum
// answers before ctx ends.
func (n *Node) ReadIndex(ctx context.Context) error {
	ch := make(chan uint64, 1)
	n.reads.mu.Lock()
	n.reads.waiting = append(n.reads.waiting, ch)
	n.reads.mu.Unlock()
	select {
	case n.reads.kick <- struct{}{}:
	default:
	}
	select {
	case index, ok := <-ch:
		if !ok {
			return ErrTimeout
		}
		return n.waitApplied(ctx, index)
	case <-ctx.Done():
		return ErrTimeout
	case <-n.stopc:
		return n.stoppedErr()
	}
}

// readLoop runs one ReadIndex round at a time for all waiting readers.
func (n *Node) readLoop() {
	defer n.done.Done()
	for {
		select {
		case <-n.stopc:
			return
		case <-n.reads.kick:
		}
		n.reads.mu.Lock()
		batch := n.reads.waiting
		n.reads.waiting = nil
		n.reads.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		index, ok := n.readRound()
		for _, ch := range batch {
			if ok {
				ch <- index
			} else {
				close(ch) // no quorum answered: the readers fail
			}
		}
	}
}

// readRound asks raft for a read index, asking again while no leader
// answers (raft drops the request when it knows no leader), for up to the
// read timeout.
func (n *Node) readRound() (uint64, bool) {
	id := newRequestID()
	rctx := binary.BigEndian.AppendUint64(nil, id)
	ch := make(chan uint64, 1)
	n.reads.mu.Lock()
	n.reads.inflight[id] = ch
	n.reads.mu.Unlock()
	defer func() {
		n.reads.mu.Lock()
		delete(n.reads.inflight, id)
		n.reads.mu.Unlock()
	}()
	deadline := time.NewTimer(readRoundTimeout)
	defer deadline.Stop()
	retry := time.NewTicker(readRetryInterval)
	defer retry.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), readRetryInterval)
		err := n.rn.ReadIndex(ctx, rctx)
		cancel()
		if err == raft.ErrStopped {
			return 0, false
		}
		select {
		case index := <-ch:
			return index, true
		case <-retry.C:
		case <-deadline.C:
			return 0, false
		case <-n.stopc:
			return 0, false
		}
	}
}

const (
	readRetryInterval = 250 * time.Millisecond
	readRoundTimeout  = 5 * time.Second
)

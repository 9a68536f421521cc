package raftnode

import (
	"sync/atomic"

	"go.etcd.io/raft/v3"
)

// Metrics is what the node reports for monitoring: its Status and
// counters since it started. It is read by a scrape; the counters are
// atomics bumped where raft is already being called. (Each follower's
// progress is in Members.)
type Metrics struct {
	Status
	// LeaderChanges counts the leaders this node saw take over (a new
	// term's leader, not the moments without one).
	LeaderChanges uint64
	// Proposals and ProposalBytes count the entries this node handed to
	// raft as leader and their data; ProposalsDropped the entries raft
	// refused (not the leader, leadership being handed over, or the
	// uncommitted tail full: ErrOverloaded).
	Proposals, ProposalBytes, ProposalsDropped uint64
	// SnapshotsSent and SnapshotsFailed count the snapshot transfers to
	// followers that raft heard finish or fail.
	SnapshotsSent, SnapshotsFailed uint64
}

// coreStats are the counters core bumps.
type coreStats struct {
	proposals, proposalBytes, dropped atomic.Uint64
	snapSent, snapFailed              atomic.Uint64
}

func (s *coreStats) proposed(data [][]byte, err error) {
	if err != nil {
		s.dropped.Add(uint64(len(data)))
		return
	}
	var n uint64
	for _, d := range data {
		n += uint64(len(d))
	}
	s.proposals.Add(uint64(len(data)))
	s.proposalBytes.Add(n)
}

func (s *coreStats) snapshotSent(status raft.SnapshotStatus) {
	if status == raft.SnapshotFinish {
		s.snapSent.Add(1)
	} else {
		s.snapFailed.Add(1)
	}
}

// Metrics returns the node's counters and replication state.
func (n *Node) Metrics() Metrics {
	m := Metrics{Status: n.Status(), LeaderChanges: n.leaderChanges.Load()}
	if c := n.core; c != nil {
		m.Proposals = c.stats.proposals.Load()
		m.ProposalBytes = c.stats.proposalBytes.Load()
		m.ProposalsDropped = c.stats.dropped.Load()
		m.SnapshotsSent = c.stats.snapSent.Load()
		m.SnapshotsFailed = c.stats.snapFailed.Load()
	}
	return m
}

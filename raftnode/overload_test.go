package raftnode

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// TestLeaderWithFollowersDownAnswersOverloaded: a leader whose followers
// never answer holds at most MaxUncommittedBytes of uncommitted entries;
// proposals beyond fail at once with ErrOverloaded instead of queueing
// (or retrying) until their deadline. A follower's dropped proposal stays
// a plain drop (it is retried elsewhere), not overload.
func TestLeaderWithFollowersDownAnswersOverloaded(t *testing.T) {
	sm := &memSM{}
	cfg := Config{ID: 1, Peers: memPeers(3), TickInterval: time.Hour, IdleTickInterval: -1, MaxUncommittedBytes: 4 << 10}
	n, _ := startMemNode(t, cfg, sm)
	n.core.Pump() // bootstrap

	if err := n.core.Propose([]byte("x")); !errors.Is(err, raft.ErrProposalDropped) {
		t.Fatalf("a follower's proposal: got %v; want raft.ErrProposalDropped", err)
	}

	// Win an election with member 2's votes, as if it had answered once;
	// without ticks, CheckQuorum never notices that it is gone.
	n.core.mu.Lock()
	_ = n.core.rn.Campaign()
	n.core.mu.Unlock()
	n.core.Pump()
	term := n.core.Status().Term + 1
	_ = n.core.StepFrame([]raftpb.Message{
		{Type: raftpb.MsgPreVoteResp, From: 2, To: 1, Term: term},
		{Type: raftpb.MsgVoteResp, From: 2, To: 1, Term: term},
	})
	waitFor(t, "leadership", n.IsLeader)

	cmd := bytes.Repeat([]byte("x"), 1<<10)
	accepted, overloaded := 0, 0
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		_, err := n.Propose(ctx, 0, cmd)
		took := time.Since(start)
		cancel()
		switch {
		case err == ErrTimeout && overloaded == 0:
			accepted++ // in the log, waiting for a quorum that never comes
		case errors.Is(err, ErrOverloaded):
			overloaded++
			if took > 100*time.Millisecond {
				t.Errorf("proposal %d: ErrOverloaded after %v; want at once", i, took)
			}
		default:
			t.Fatalf("proposal %d: got %v after %v (%d accepted, %d overloaded before); want ErrTimeout, then ErrOverloaded", i, err, took, accepted, overloaded)
		}
	}
	if accepted == 0 || accepted > 4 || overloaded == 0 {
		t.Errorf("%d proposals of 1 KiB accepted, %d overloaded; want 1..4 accepted (4 KiB uncommitted at most), the rest overloaded", accepted, overloaded)
	}
}

package raftnode

import (
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

func appendMsg(index, commit uint64, entries int) raftpb.Message {
	m := raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2, Term: 3, Index: index, LogTerm: 3, Commit: commit}
	for i := 0; i < entries; i++ {
		m.Entries = append(m.Entries, raftpb.Entry{Term: 3, Index: index + 1 + uint64(i), Data: []byte("x")})
	}
	return m
}

// TestTransportReplacesHeldCommitByNextAppend: an append without entries
// (a commit index moving) followed by an append with entries reaches the
// peer as the second alone, which carries the newer commit index; other
// messages are never held and keep their order.
func TestTransportReplacesHeldCommitByNextAppend(t *testing.T) {
	a, _, _, brc, _ := pairOverTCP(t)

	a.trans.send([]raftpb.Message{
		{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 3, Commit: 4},
		appendMsg(5, 5, 0),
		appendMsg(5, 5, 2),
		{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 3, Commit: 5},
	})
	got := waitMessages(t, brc, 3)
	time.Sleep(20 * commitHold) // a held append, had one stayed, is out by now
	got = brc.messages()
	want := []struct {
		typ     raftpb.MessageType
		entries int
	}{{raftpb.MsgHeartbeat, 0}, {raftpb.MsgApp, 2}, {raftpb.MsgHeartbeat, 0}}
	if len(got) != len(want) {
		t.Fatalf("peer received %d messages; want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Type != w.typ || len(got[i].Entries) != w.entries {
			t.Errorf("message %d: %v with %d entries; want %v with %d", i, got[i].Type, len(got[i].Entries), w.typ, w.entries)
		}
	}
}

// TestTransportReleasesLoneCommit: an append without entries that nothing
// replaces still goes out, after commitHold, and only the latest of several
// such does.
func TestTransportReleasesLoneCommit(t *testing.T) {
	a, _, _, brc, _ := pairOverTCP(t)

	start := time.Now()
	a.trans.send([]raftpb.Message{appendMsg(7, 6, 0)})
	a.trans.send([]raftpb.Message{appendMsg(7, 7, 0)})
	got := waitMessages(t, brc, 1)
	if waited := time.Since(start); waited < commitHold {
		t.Errorf("held append arrived after %v; want at least %v", waited, commitHold)
	}
	time.Sleep(20 * commitHold)
	got = brc.messages()
	if len(got) != 1 || got[0].Type != raftpb.MsgApp || got[0].Commit != 7 {
		t.Fatalf("peer received %v; want the one append with commit 7", got)
	}

	// The hold is re-armed for the next one.
	a.trans.send([]raftpb.Message{appendMsg(7, 8, 0)})
	got = waitMessages(t, brc, 2)
	if got[1].Commit != 8 {
		t.Fatalf("second release carried commit %d; want 8", got[1].Commit)
	}
}

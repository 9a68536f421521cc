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

	a.tcp.Send([]raftpb.Message{
		{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 3, Commit: 4},
		appendMsg(5, 5, 0),
		appendMsg(5, 5, 2),
		{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 3, Commit: 5},
	})
	waitMessages(t, brc, 3)
	time.Sleep(20 * commitHold) // a held append, had one stayed, is out by now
	got := brc.messages()
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
	a.tcp.Send([]raftpb.Message{appendMsg(7, 6, 0)})
	a.tcp.Send([]raftpb.Message{appendMsg(7, 7, 0)})
	waitMessages(t, brc, 1)
	if waited := time.Since(start); waited < commitHold {
		t.Errorf("held append arrived after %v; want at least %v", waited, commitHold)
	}
	time.Sleep(20 * commitHold)
	got := brc.messages()
	if len(got) != 1 || got[0].Type != raftpb.MsgApp || got[0].Commit != 7 {
		t.Fatalf("peer received %v; want the one append with commit 7", got)
	}

	// The hold is re-armed for the next one.
	a.tcp.Send([]raftpb.Message{appendMsg(7, 8, 0)})
	got = waitMessages(t, brc, 2)
	if got[1].Commit != 8 {
		t.Fatalf("second release carried commit %d; want 8", got[1].Commit)
	}
}

// TestMergeAppend: an append that continues the previous one (same term,
// its previous index the last one's final entry) folds into it, with the
// later commit index; anything else stays a message of its own; raft's
// entry slices are never written.
func TestMergeAppend(t *testing.T) {
	raftEnts := make([]raftpb.Entry, 1, 8) // room to grow: a merge must not use it
	raftEnts[0] = raftpb.Entry{Term: 3, Index: 6, Data: []byte("a")}
	last := raftpb.Message{Type: raftpb.MsgApp, Term: 3, Index: 5, LogTerm: 3, Commit: 4, Entries: raftEnts}

	next := appendMsg(6, 5, 2) // entries 7, 8
	ok, owned := mergeAppend(&last, &next, false)
	if !ok || !owned {
		t.Fatalf("contiguous append not merged (ok %v, owned %v)", ok, owned)
	}
	if raftEnts[:2][1].Index != 0 {
		t.Fatal("merge wrote into raft's entry slice")
	}
	commitOnly := appendMsg(8, 8, 0)
	if ok, owned = mergeAppend(&last, &commitOnly, owned); !ok || !owned {
		t.Fatalf("commit-only continuation not merged (ok %v, owned %v)", ok, owned)
	}
	more := appendMsg(8, 8, 1) // entry 9
	if ok, _ = mergeAppend(&last, &more, owned); !ok {
		t.Fatal("second contiguous append not merged")
	}
	if last.Index != 5 || last.LogTerm != 3 || last.Commit != 8 || len(last.Entries) != 4 {
		t.Fatalf("merged append: index %d logterm %d commit %d, %d entries; want 5, 3, 8, 4", last.Index, last.LogTerm, last.Commit, len(last.Entries))
	}
	for i, e := range last.Entries {
		if e.Index != uint64(6+i) {
			t.Fatalf("entry %d has index %d; want %d", i, e.Index, 6+i)
		}
	}

	for name, m := range map[string]raftpb.Message{
		"gap":           appendMsg(10, 8, 1),
		"overlap":       appendMsg(7, 8, 1),
		"other term":    func() raftpb.Message { m := appendMsg(9, 8, 1); m.Term = 4; return m }(),
		"other logterm": func() raftpb.Message { m := appendMsg(9, 8, 1); m.LogTerm = 2; return m }(),
		"heartbeat":     {Type: raftpb.MsgHeartbeat, Term: 3, Commit: 8},
	} {
		before := len(last.Entries)
		if ok, _ := mergeAppend(&last, &m, true); ok || len(last.Entries) != before {
			t.Errorf("%s: merged; want a message of its own", name)
		}
	}
	hb := raftpb.Message{Type: raftpb.MsgHeartbeat, Term: 3}
	if ok, _ := mergeAppend(&hb, &more, false); ok {
		t.Error("append merged into a heartbeat")
	}
}

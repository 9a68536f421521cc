package storage

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/entry"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
)

// confChange encodes a conf change entry about m.
func (l *logBuilder) confChange(typ raftpb.ConfChangeType, m *statev1.Member) raftpb.Entry {
	cc := raftpb.ConfChange{Type: typ, NodeID: m.GetId(), Context: entry.ConfChangeContext(m, 7)}
	b, err := cc.Marshal()
	if err != nil {
		panic(err)
	}
	return l.raw(raftpb.EntryConfChange, b)
}

// TestApplyKeepsMembers: conf changes keep the members, with their
// addresses and roles, in the state machine beside the ConfState, in the
// same batch; a promotion keeps the addresses; a removal forgets the
// member; they survive a reopen; a conf change without a context (from
// before contexts were kept) names the member by id alone.
func TestApplyKeepsMembers(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	l := newLog()
	a := &statev1.Member{Id: 10, Name: "a", PeerAddress: "a:1"}
	b := &statev1.Member{Id: 20, Name: "b", PeerAddress: "b:1", ClientAddress: "b:2"}
	c := &statev1.Member{Id: 30, Name: "c", PeerAddress: "c:1"}
	mustApply(t, s, []raftpb.Entry{
		l.confChange(raftpb.ConfChangeAddNode, a),
		l.confChange(raftpb.ConfChangeAddLearnerNode, b),
		l.confChange(raftpb.ConfChangeAddLearnerNode, c),
		l.confChange(raftpb.ConfChangeAddNode, &statev1.Member{Id: 20}), // promote b
		l.confChange(raftpb.ConfChangeRemoveNode, &statev1.Member{Id: 30}),
		l.raw(raftpb.EntryConfChange, mustMarshalConfChange(raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: 40})),
	}, &raftpb.ConfState{Voters: []uint64{10, 20, 40}})
	want := []*statev1.Member{
		{Id: 10, Name: "a", PeerAddress: "a:1"},
		{Id: 20, Name: "b", PeerAddress: "b:1", ClientAddress: "b:2"},
		{Id: 40},
	}
	check := func(s *Store, when string) {
		got := s.Members()
		if len(got) != len(want) {
			t.Fatalf("%s: members %v; want %v", when, got, want)
		}
		for i := range want {
			if got[i].String() != want[i].String() {
				t.Errorf("%s: member %d = %v; want %v", when, i, got[i], want[i])
			}
		}
	}
	check(s, "after apply")
	s = reopen(t, s, fs)
	check(s, "after reopen")
	if got := s.AppliedIndex(); got != 6 {
		t.Errorf("AppliedIndex() = %d; want 6", got)
	}
}

func mustMarshalConfChange(cc raftpb.ConfChange) []byte {
	b, err := cc.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

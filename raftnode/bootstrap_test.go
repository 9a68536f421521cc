package raftnode

import (
	"bytes"
	"math"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// TestBootstrapEntriesIdenticalOnEveryMember: every member of a new cluster
// writes the same bootstrap entries (the conf changes adding each member,
// in ascending id order), byte for byte: replicas' logs must not differ.
func TestBootstrapEntriesIdenticalOnEveryMember(t *testing.T) {
	const members = 7
	peers := memPeers(members)
	var first []raftpb.Entry
	for id := uint64(1); id <= members; id++ {
		n, log := startMemNode(t, Config{ID: id, Peers: peers, TickInterval: time.Hour, IdleTickInterval: -1}, &memSM{})
		n.core.Pump() // the bootstrap Ready: its entries are persisted
		ents, err := log.Entries(1, members+1, math.MaxUint64)
		if err != nil {
			t.Fatalf("member %d: bootstrap entries: %v", id, err)
		}
		n.Stop()
		var order []uint64
		for _, e := range ents {
			var cc raftpb.ConfChange
			if e.Type != raftpb.EntryConfChange || cc.Unmarshal(e.Data) != nil || cc.Type != raftpb.ConfChangeAddNode {
				t.Fatalf("member %d: entry %d is %v; want a conf change adding a member", id, e.Index, e.Type)
			}
			order = append(order, cc.NodeID)
		}
		for i, nid := range order {
			if nid != uint64(i+1) {
				t.Fatalf("member %d bootstraps members in order %v; want ascending ids", id, order)
			}
		}
		if first == nil {
			first = ents
			continue
		}
		for i := range ents {
			if ents[i].Index != first[i].Index || ents[i].Term != first[i].Term || !bytes.Equal(ents[i].Data, first[i].Data) {
				t.Fatalf("member %d: bootstrap entry %d differs from member 1's", id, ents[i].Index)
			}
		}
	}
}

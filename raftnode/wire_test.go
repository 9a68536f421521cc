package raftnode

import (
	"bytes"
	"testing"

	peerv1 "github.com/keystore-dev/keystore/proto/keystore/peer/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// TestEncodeBatchIsAStreamRequest: what encodeBatch writes (and peerCodec
// sends as it is) decodes as the StreamRequest the receiver expects, with
// every message intact and in order.
func TestEncodeBatchIsAStreamRequest(t *testing.T) {
	big := bytes.Repeat([]byte{0xab}, 300)
	msgs := []raftpb.Message{
		{Type: raftpb.MsgApp, To: 2, From: 1, Term: 7, LogTerm: 6, Index: 41, Commit: 40,
			Entries: []raftpb.Entry{{Term: 7, Index: 42, Data: []byte("a")}, {Term: 7, Index: 43, Data: big}}},
		{Type: raftpb.MsgHeartbeat, To: 2, From: 1, Term: 7, Commit: 43},
		{Type: raftpb.MsgAppResp, To: 2, From: 1, Term: 7, Index: 43, Reject: true, RejectHint: 40},
	}
	for _, tc := range []struct {
		name            string
		from, clusterID uint64
		msgs            []raftpb.Message
	}{
		{"messages", 1, 0xfeedface12345678, msgs},
		{"one", 3, 1, msgs[1:2]},
		{"zero ids", 0, 0, msgs[:1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wb, err := encodeBatch(tc.from, tc.clusterID, tc.msgs)
			if err != nil {
				t.Fatal(err)
			}
			data, err := peerCodec{}.Marshal(wb)
			if err != nil {
				t.Fatal(err)
			}
			var req peerv1.StreamRequest
			if err := proto.Unmarshal(data.Materialize(), &req); err != nil {
				t.Fatalf("not a StreamRequest: %v", err)
			}
			data.Free()
			if req.GetFrom() != tc.from || req.GetClusterId() != tc.clusterID {
				t.Errorf("from %d, cluster id %x; want %d, %x", req.GetFrom(), req.GetClusterId(), tc.from, tc.clusterID)
			}
			if len(req.GetMessages()) != len(tc.msgs) {
				t.Fatalf("%d messages; want %d", len(req.GetMessages()), len(tc.msgs))
			}
			for i, b := range req.GetMessages() {
				want, _ := tc.msgs[i].Marshal()
				if !bytes.Equal(b, want) {
					t.Errorf("message %d = %x; want %x", i, b, want)
				}
			}
		})
	}
}

// TestPeerCodecPassesOtherMessages: anything but a wireBatch goes through
// the protobuf codec both ways.
func TestPeerCodecPassesOtherMessages(t *testing.T) {
	in := &peerv1.ForwardRequest{RequestId: 9, Payload: []byte("cmd"), ClusterId: 5}
	data, err := peerCodec{}.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out peerv1.ForwardRequest
	if err := (peerCodec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(data.Materialize())}, &out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, &out) {
		t.Errorf("round trip gave %v; want %v", &out, in)
	}
}

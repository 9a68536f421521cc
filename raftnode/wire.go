package raftnode

import (
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"go.etcd.io/raft/v3/raftpb"
)

// Field numbers of peerv1.StreamRequest (proto/keystore/peer/v1).
const (
	streamFieldFrom      protowire.Number = 1
	streamFieldMessages  protowire.Number = 2
	streamFieldClusterID protowire.Number = 3
)

// wireBatch is a peerv1.StreamRequest already in its wire form, in a buffer
// of gRPC's pool: encodeBatch writes every raft message straight into it,
// where marshalling each message and then the request would copy every
// entry twice (measured: the peer sender was the leader's largest
// allocator). gRPC frees the buffer once it has been written.
type wireBatch struct {
	buf *[]byte
}

// encodeBatch encodes the StreamRequest {from, clusterID, msgs}.
func encodeBatch(from, clusterID uint64, msgs []raftpb.Message) (*wireBatch, error) {
	var sizes [64]int
	sz := sizes[:0]
	n := 0
	if from != 0 {
		n += protowire.SizeTag(streamFieldFrom) + protowire.SizeVarint(from)
	}
	if clusterID != 0 {
		n += protowire.SizeTag(streamFieldClusterID) + protowire.SizeVarint(clusterID)
	}
	for i := range msgs {
		s := msgs[i].Size()
		sz = append(sz, s)
		n += protowire.SizeTag(streamFieldMessages) + protowire.SizeBytes(s)
	}
	buf := mem.DefaultBufferPool().Get(n)
	b := (*buf)[:0]
	if from != 0 {
		b = protowire.AppendTag(b, streamFieldFrom, protowire.VarintType)
		b = protowire.AppendVarint(b, from)
	}
	for i := range msgs {
		b = protowire.AppendTag(b, streamFieldMessages, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sz[i]))
		if _, err := msgs[i].MarshalToSizedBuffer(b[len(b) : len(b)+sz[i]]); err != nil {
			mem.DefaultBufferPool().Put(buf)
			return nil, err
		}
		b = b[:len(b)+sz[i]]
	}
	if clusterID != 0 {
		b = protowire.AppendTag(b, streamFieldClusterID, protowire.VarintType)
		b = protowire.AppendVarint(b, clusterID)
	}
	*buf = b
	return &wireBatch{buf: buf}, nil
}

// peerCodec is the peer stream's codec: a wireBatch goes out as it is, and
// everything else through gRPC's protobuf codec. Its name is "proto", so
// the receiver decodes a wireBatch as the StreamRequest it is.
type peerCodec struct{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

func (peerCodec) Name() string { return grpcproto.Name }

func (peerCodec) Marshal(v any) (mem.BufferSlice, error) {
	if w, ok := v.(*wireBatch); ok {
		return mem.BufferSlice{mem.NewBuffer(w.buf, mem.DefaultBufferPool())}, nil
	}
	return protoCodec.Marshal(v)
}

func (peerCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return protoCodec.Unmarshal(data, v)
}

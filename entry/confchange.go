package entry

import (
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// Conf changes (raftpb.ConfChange, one change each) carry a
// statev1.ConfChangeContext: the member the change adds, promotes or
// removes, with its addresses, so that every replica learns them from the
// log (the bootstrap's conf changes too), and the request id its proposer
// waits on.

// ConfChangeContext encodes the context of a conf change about m. The
// encoding is deterministic: the bootstrap's conf changes must be the same
// bytes on every member.
func ConfChangeContext(m *statev1.Member, requestID uint64) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&statev1.ConfChangeContext{RequestId: requestID, Member: m})
	if err != nil {
		panic(err) // a valid message in memory always encodes
	}
	return b
}

// DecodeConfChangeContext decodes a conf change's context; an empty or
// undecodable one (a conf change written before contexts were kept) gives
// an empty context.
func DecodeConfChangeContext(b []byte) *statev1.ConfChangeContext {
	c := &statev1.ConfChangeContext{}
	if len(b) > 0 && proto.Unmarshal(b, c) != nil {
		return &statev1.ConfChangeContext{}
	}
	return c
}

package entry

import (
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Encode returns the entry that carries ps, stamped with the leader's log
// time (Unix nanoseconds): the single-proposal form for one proposal, the
// packed form (statev1.Entry.proposals) for several. ps must obey the
// packing rules (Packer).
func Encode(time int64, ps []*Proposal) ([]byte, error) {
	env := &statev1.Entry{Time: time}
	if len(ps) == 1 {
		env.RequestId, env.Command = ps[0].RequestID, ps[0].Command
	} else {
		env.Proposals = make([]*statev1.Proposal, len(ps))
		for i, p := range ps {
			env.Proposals[i] = &statev1.Proposal{RequestId: p.RequestID, Command: p.Command}
		}
	}
	return proto.Marshal(env)
}

// Tick returns an entry that carries no command, only log time: the
// leader appends one when idle so that log time, and with it expiry,
// moves on.
func Tick(time int64) []byte {
	b, _ := proto.Marshal(&statev1.Entry{Time: time}) // cannot fail
	return b
}

// Decode decodes an entry's data into env.
func Decode(data []byte, env *statev1.Entry) error {
	return proto.Unmarshal(data, env)
}

// Header reads the request id (0 for a packed entry or a tick) and the log
// time of an entry without decoding its commands; ok is false if the data
// is not an entry.
func Header(data []byte) (requestID uint64, time int64, ok bool) {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return 0, 0, false
		}
		data = data[n:]
		if typ == protowire.VarintType && (num == 1 || num == 2) {
			v, m := protowire.ConsumeVarint(data)
			if m < 0 {
				return 0, 0, false
			}
			if num == 1 {
				requestID = v
			} else {
				time = int64(v)
			}
			data = data[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, data)
		if m < 0 {
			return 0, 0, false
		}
		data = data[m:]
	}
	return requestID, time, true
}

// Answers hands each proposal of an applied entry its result: res itself
// to the single proposal's requestID (from Header), or, for a packed entry
// (res.packed set), each packed result to the request id it carries. A
// request id of 0 is nobody's. res may be nil (nothing to answer).
func Answers(requestID uint64, res *statev1.Result, answer func(requestID uint64, r *statev1.Result)) {
	if res == nil {
		return
	}
	if res.Packed != nil {
		for _, r := range res.Packed {
			if r.GetRequestId() != 0 {
				answer(r.GetRequestId(), r)
			}
		}
		return
	}
	if requestID != 0 {
		answer(requestID, res)
	}
}

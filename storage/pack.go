package storage

import (
	"encoding/binary"

	"google.golang.org/protobuf/encoding/protowire"
)

// PackKey names the record an encoded Command changes, so that the Raft
// node can pack commands on different records into one log entry (see
// statev1.Entry); grants is set for a Claim, which may grant a token (an
// entry holds at most one, so that no two claims share a token). ok is
// false for a command that must travel alone: an Expire, which may touch
// any record, or anything it cannot read. It reads the encoding without
// decoding the command: for a command it accepts, the key is the one Apply
// will find (the last value of a repeated scalar field wins, as in proto
// decoding; a repeated or second op is refused).
func (s *Store) PackKey(command []byte) (key string, grants, ok bool) {
	return packKey(command)
}

func packKey(command []byte) (key string, grants, ok bool) {
	var op []byte
	b := command
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", false, false
		}
		b = b[n:]
		switch {
		case num >= 1 && num <= 4 && typ == protowire.BytesType:
			if op != nil {
				return "", false, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return "", false, false
			}
			op, b = v, b[m:]
			grants = num == 1 // Claim
			continue
		case num == 5:
			return "", false, false // Expire
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return "", false, false
		}
		b = b[m:]
	}
	if op == nil {
		return "", false, false
	}
	// Claim, Complete, Release and Heartbeat all carry the namespace in
	// field 1 and the key in field 2.
	var ns, k []byte
	for len(op) > 0 {
		num, typ, n := protowire.ConsumeTag(op)
		if n < 0 {
			return "", false, false
		}
		op = op[n:]
		if (num == 1 || num == 2) && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(op)
			if m < 0 {
				return "", false, false
			}
			if num == 1 {
				ns = v
			} else {
				k = v
			}
			op = op[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, op)
		if m < 0 {
			return "", false, false
		}
		op = op[m:]
	}
	if len(ns) == 0 || len(k) == 0 {
		return "", false, false
	}
	b = binary.AppendUvarint(make([]byte, 0, 2+len(ns)+len(k)), uint64(len(ns)))
	return string(append(append(b, ns...), k...)), grants, true
}

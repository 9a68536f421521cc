package entry

import (
	"encoding/binary"

	"google.golang.org/protobuf/encoding/protowire"
)

// Limits bound one packed entry. A proposal larger than MaxBytes travels
// alone; MaxProposals 1 turns packing off.
type Limits struct {
	MaxProposals int
	MaxBytes     int
}

// Proposal is one command proposed under a request id, with what the
// packing rules need to know of it.
type Proposal struct {
	RequestID uint64
	Command   []byte
	// Key names the record Command changes (see PackKey); "" if it must
	// travel alone.
	Key string
	// Grants is set when Command may grant a token (a Claim).
	Grants bool
}

// NewProposal returns the proposal of command under requestID.
func NewProposal(requestID uint64, command []byte) Proposal {
	p := Proposal{RequestID: requestID, Command: command}
	if key, grants, ok := PackKey(command); ok {
		p.Key, p.Grants = key, grants
	}
	return p
}

// Packer gathers proposals into one packed entry under the packing rules:
// every proposal names a record (Key), no two name the same record, and at
// most one may grant a token (a token is the index of the entry that
// granted it, so no two claims may share an entry). The leader packs with
// Fits and Add; every replica's state machine checks a packed entry with
// Admits and Add, and refuses what a leader would not have packed. The
// zero value is not ready: use NewPacker.
type Packer struct {
	lim    Limits
	keys   map[string]struct{}
	n      int
	bytes  int
	grants bool
}

// NewPacker returns an empty Packer bounded by lim (zero fields: no
// bound).
func NewPacker(lim Limits) *Packer {
	return &Packer{lim: lim, keys: make(map[string]struct{})}
}

// Admits reports whether p may join the entry under the packing rules,
// whatever the limits.
func (pk *Packer) Admits(p *Proposal) bool {
	if p.Key == "" || (p.Grants && pk.grants) {
		return false
	}
	_, dup := pk.keys[p.Key]
	return !dup
}

// Fits reports whether the leader may add p to the entry: the entry is
// empty, or it admits p within the limits.
func (pk *Packer) Fits(p *Proposal) bool {
	if pk.n == 0 {
		return true
	}
	if pk.lim.MaxProposals > 0 && pk.n >= pk.lim.MaxProposals {
		return false
	}
	if pk.lim.MaxBytes > 0 && pk.bytes+len(p.Command) > pk.lim.MaxBytes {
		return false
	}
	return pk.Admits(p)
}

// Add adds p to the entry.
func (pk *Packer) Add(p *Proposal) {
	pk.n++
	pk.bytes += len(p.Command)
	pk.grants = pk.grants || p.Grants
	if p.Key != "" {
		pk.keys[p.Key] = struct{}{}
	}
}

// Len returns the number of proposals added since the last Reset.
func (pk *Packer) Len() int { return pk.n }

// Reset empties the entry.
func (pk *Packer) Reset() {
	clear(pk.keys)
	pk.n, pk.bytes, pk.grants = 0, 0, false
}

// PackKey names the record an encoded Command changes, so that the leader
// can pack commands on different records into one log entry; grants is set
// for a Claim, which may grant a token. ok is false for a command that must
// travel alone: an Expire, which may touch any record, or anything it
// cannot read. It reads the encoding without decoding the command: for a
// command it accepts, the key is the one the state machine will find (the
// last value of a repeated scalar field wins, as in proto decoding; a
// repeated or second op is refused). Two commands get the same key exactly
// when they name the same namespace and key.
func PackKey(command []byte) (key string, grants, ok bool) {
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

package api

import (
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// CheckCommand validates a command that reached the leader from another
// node (raftnode's Forward) before the leader proposes it. The node that
// forwarded it validated the client's request already; the leader checks
// again so that a forged or corrupt Forward cannot store what no client
// request could: a bad namespace, an oversize key, a lease of a century.
// It judges by the contract's fixed ceilings, not by this node's
// configuration, which may differ from the forwarding node's during a
// rolling change of flags. The error is an INVALID_ARGUMENT status.
func CheckCommand(b []byte) error {
	var cmd statev1.Command
	if err := proto.Unmarshal(b, &cmd); err != nil {
		return invalidArgument([]fieldError{{"command", "does not decode"}})
	}
	var v validator
	switch op := cmd.GetOp().(type) {
	case *statev1.Command_Claim:
		c := op.Claim
		v.namespace(c.GetNamespace())
		v.key(c.GetKey())
		v.fingerprint(c.GetFingerprint())
		v.owner(c.GetOwner())
		v.nanos("lease", c.GetLease(), 1, int64(contractMaxLease))
		v.nanos("retention", c.GetRetention(), 1, int64(maxRetentionCeiling))
	case *statev1.Command_Complete:
		c := op.Complete
		v.namespace(c.GetNamespace())
		v.key(c.GetKey())
		v.token(c.GetToken())
		v.nanos("retention", c.GetRetention(), 0, int64(maxRetentionCeiling))
		if r := c.GetResponse(); r != nil {
			size := len(r.GetBody())
			for k, val := range r.GetMetadata() {
				size += len(k) + len(val)
			}
			if size > MaxEntryBytes {
				v.add("response", "must be at most %d bytes (got %d)", MaxEntryBytes, size)
			}
		}
	case *statev1.Command_Release:
		v.namespace(op.Release.GetNamespace())
		v.key(op.Release.GetKey())
		v.token(op.Release.GetToken())
	case *statev1.Command_Heartbeat:
		h := op.Heartbeat
		v.namespace(h.GetNamespace())
		v.key(h.GetKey())
		v.token(h.GetToken())
		v.nanos("lease", h.GetLease(), 1, int64(contractMaxLease))
	case *statev1.Command_Expire:
		// Harmless by construction: apply sweeps only what expired by the
		// entry's own log time, at most MaxExpireLimit records.
	default:
		return invalidArgument([]fieldError{{"command", "names no operation"}})
	}
	return v.err()
}

// nanos checks a duration in nanoseconds lies in [lo, hi].
func (c *validator) nanos(field string, d, lo, hi int64) {
	if d < lo || d > hi {
		c.add(field, "must be in [%s, %s] (got %s)", time.Duration(lo), time.Duration(hi), time.Duration(d))
	}
}

// maxRetentionCeiling bounds the configurable MaxRetention: a record
// outliving a year is no idempotency record.
const maxRetentionCeiling = 366 * 24 * time.Hour

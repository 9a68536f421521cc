package rules

import (
	"bytes"
	"math"

	"github.com/keystore-dev/keystore/internal/bugs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// Transition is the pure core of the state machine: the contract's rules as
// a function of (current record, command, entry index, request id, log
// time). cur is nil when the key has no record. It returns the record to
// store (nil with write=true deletes the key), whether to write at all, and
// the result returned to the proposer.
//
// NB: Transition must stay deterministic: it reads no clock, no randomness
// and iterates no map, because every replica runs it on the same log and
// must end with byte-identical state. cur is never modified.
func Transition(cur *statev1.Record, cmd *statev1.Command, index, requestID uint64, now int64) (next *statev1.Record, write bool, res *statev1.Result) {
	// A record at or past expires_at is gone: it lives while now < expires_at.
	if cur != nil && now >= cur.GetExpiresAt() {
		cur = nil
	}
	switch op := cmd.GetOp().(type) {
	case *statev1.Command_Claim:
		return claim(cur, op.Claim, index, requestID, now)
	case *statev1.Command_Complete:
		return complete(cur, op.Complete, now)
	case *statev1.Command_Release:
		return release(cur, op.Release)
	case *statev1.Command_Heartbeat:
		return heartbeat(cur, op.Heartbeat, now)
	default:
		return nil, false, Invalid()
	}
}

func claim(cur *statev1.Record, c *statev1.Claim, index, requestID uint64, now int64) (*statev1.Record, bool, *statev1.Result) {
	if c.GetLease() <= 0 || c.GetRetention() <= 0 {
		return nil, false, failure(statev1.Error_ERROR_INVALID_COMMAND)
	}
	if cur == nil {
		expires := addSat(now, c.GetRetention())
		rec := &statev1.Record{
			State:          statev1.State_STATE_IN_PROGRESS,
			Fingerprint:    c.GetFingerprint(),
			Token:          index,
			Attempt:        1,
			Owner:          c.GetOwner(),
			CreatedAt:      now,
			LeaseExpiresAt: min(addSat(now, c.GetLease()), expires),
			ExpiresAt:      expires,
			Retention:      c.GetRetention(),
			ClaimRequestId: requestID,
		}
		return rec, true, &statev1.Result{Outcome: statev1.Outcome_OUTCOME_ACQUIRED, Record: rec}
	}
	// The fingerprint is checked on every path over an existing record.
	if fingerprintsDiffer(cur.GetFingerprint(), c.GetFingerprint()) {
		return nil, false, failure(statev1.Error_ERROR_FINGERPRINT_MISMATCH)
	}
	if cur.GetState() == statev1.State_STATE_COMPLETED {
		return nil, false, &statev1.Result{Outcome: statev1.Outcome_OUTCOME_COMPLETED, Record: cur}
	}
	// A second proposal of the Claim that granted the current token (a retry
	// after a leader change lost track of the first) gets the same answer.
	if requestID != 0 && cur.GetClaimRequestId() == requestID {
		return nil, false, &statev1.Result{Outcome: statev1.Outcome_OUTCOME_ACQUIRED, Record: cur}
	}
	if now < cur.GetLeaseExpiresAt() {
		return nil, false, &statev1.Result{Outcome: statev1.Outcome_OUTCOME_IN_PROGRESS, Record: cur}
	}
	// Takeover: the lease ended, so this caller gets a new token and the old
	// holder is fenced off. The record restarts its retention from now.
	next := proto.Clone(cur).(*statev1.Record)
	expires := addSat(now, c.GetRetention())
	next.Token = index
	if next.Attempt < math.MaxUint32 {
		next.Attempt++
	}
	next.Owner = c.GetOwner()
	if len(next.Fingerprint) == 0 {
		next.Fingerprint = c.GetFingerprint()
	}
	next.ExpiresAt = expires
	next.Retention = c.GetRetention()
	next.LeaseExpiresAt = min(addSat(now, c.GetLease()), expires)
	next.ClaimRequestId = requestID
	return next, true, &statev1.Result{Outcome: statev1.Outcome_OUTCOME_ACQUIRED, Record: next}
}

func complete(cur *statev1.Record, c *statev1.Complete, now int64) (*statev1.Record, bool, *statev1.Result) {
	if cur == nil || cur.GetToken() != c.GetToken() && !bugs.NoToken {
		return nil, false, failure(statev1.Error_ERROR_CLAIM_LOST)
	}
	if cur.GetState() == statev1.State_STATE_COMPLETED {
		// Complete is idempotent: the first response wins.
		return nil, false, &statev1.Result{Record: cur}
	}
	retention := c.GetRetention()
	if retention <= 0 {
		retention = cur.GetRetention()
	}
	next := proto.Clone(cur).(*statev1.Record)
	next.State = statev1.State_STATE_COMPLETED
	next.CompletedAt = now
	next.ExpiresAt = addSat(now, retention)
	next.LeaseExpiresAt = min(next.LeaseExpiresAt, now) // the lease ends with the work
	next.Response = c.GetResponse()
	if next.Response == nil {
		next.Response = &statev1.Response{}
	}
	return next, true, &statev1.Result{Record: next}
}

func release(cur *statev1.Record, r *statev1.Release) (*statev1.Record, bool, *statev1.Result) {
	switch {
	case cur == nil:
		return nil, false, &statev1.Result{}
	case cur.GetState() == statev1.State_STATE_COMPLETED:
		return nil, false, failure(statev1.Error_ERROR_ALREADY_COMPLETED)
	case cur.GetToken() != r.GetToken():
		return nil, false, failure(statev1.Error_ERROR_CLAIM_LOST)
	}
	return nil, true, &statev1.Result{}
}

func heartbeat(cur *statev1.Record, h *statev1.Heartbeat, now int64) (*statev1.Record, bool, *statev1.Result) {
	switch {
	case cur == nil:
		return nil, false, failure(statev1.Error_ERROR_CLAIM_LOST)
	case cur.GetState() == statev1.State_STATE_COMPLETED:
		return nil, false, failure(statev1.Error_ERROR_ALREADY_COMPLETED)
	case cur.GetToken() != h.GetToken():
		return nil, false, failure(statev1.Error_ERROR_CLAIM_LOST)
	case h.GetLease() <= 0:
		return nil, false, failure(statev1.Error_ERROR_INVALID_COMMAND)
	}
	// A lapsed lease is revived as long as nobody took over.
	next := proto.Clone(cur).(*statev1.Record)
	next.LeaseExpiresAt = min(addSat(now, h.GetLease()), next.ExpiresAt)
	return next, true, &statev1.Result{Record: next}
}

func failure(e statev1.Error) *statev1.Result { return &statev1.Result{Error: e} }

// Invalid returns the result of a command that cannot be applied.
func Invalid() *statev1.Result { return failure(statev1.Error_ERROR_INVALID_COMMAND) }

// fingerprintsDiffer reports whether both fingerprints are set and differ;
// an empty fingerprint means "do not check".
func fingerprintsDiffer(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && !bytes.Equal(a, b)
}

// addSat returns a+b for b >= 0, saturating at MaxInt64.
func addSat(a, b int64) int64 {
	if b > 0 && a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// Target returns the namespace and key a command addresses; ok is false
// for a command that addresses no single record (an Expire, or one with an
// empty namespace or key).
func Target(cmd *statev1.Command) (namespace, key string, ok bool) {
	switch op := cmd.GetOp().(type) {
	case *statev1.Command_Claim:
		namespace, key = op.Claim.GetNamespace(), op.Claim.GetKey()
	case *statev1.Command_Complete:
		namespace, key = op.Complete.GetNamespace(), op.Complete.GetKey()
	case *statev1.Command_Release:
		namespace, key = op.Release.GetNamespace(), op.Release.GetKey()
	case *statev1.Command_Heartbeat:
		namespace, key = op.Heartbeat.GetNamespace(), op.Heartbeat.GetKey()
	default:
		return "", "", false
	}
	if namespace == "" || key == "" {
		return "", "", false
	}
	return namespace, key, true
}

// DecideClaim answers a Claim over cur at log time now without the log,
// when the log would not change anything: readOnly is true when applying
// the Claim at now would write nothing (the record is COMPLETED, or held
// under a live lease, or the fingerprints differ), and res is then the
// answer the log would give. A Claim that would create or take over a
// record (readOnly false) must be proposed.
func DecideClaim(cur *statev1.Record, c *statev1.Claim, requestID uint64, now int64) (res *statev1.Result, readOnly bool) {
	_, write, res := Transition(cur, &statev1.Command{Op: &statev1.Command_Claim{Claim: c}}, 0, requestID, now)
	return res, !write
}

package checker

import (
	"bytes"
	"math"
	"strings"

	"github.com/keystore-dev/keystore/cluster-test/history"
)

// val is a number the model knows exactly, or only a lower bound of.
type val struct {
	v     int64
	exact bool
}

func exactly(v int64) val { return val{v: v, exact: true} }
func atLeast(v int64) val { return val{v: v} }

// admits reports whether v is a possible value.
func (x val) admits(v int64) bool {
	if x.exact {
		return v == x.v
	}
	return v >= x.v
}

// covers reports whether every value y admits, x admits.
func (x val) covers(y val) bool {
	if x.exact {
		return y.exact && y.v == x.v
	}
	return y.v >= x.v
}

// anyHolder is the holder of a claim granted by a ghost: the model does not
// know which request it answered, so any client's Claim may be its retry.
const anyHolder = -1

// kstate is one possible state of a key: the record (if any) as far as the
// model knows it, and what it knows of log time and tokens.
//
// kstate is comparable; the model relies on == for equality.
type kstate struct {
	// top is the widened state that accepts every operation: the model
	// switches to it when the possibilities grow past maxStates.
	top bool

	now      int64 // log time is at least now
	maxToken int64 // the largest token revealed on this key

	// reads counts the linearized ops whose output shows a current
	// record with its token, readsAtMax those of them showing token
	// maxToken, hiddenReads those showing one without its token that
	// readers bounds (see call.step). All follow from the set of
	// linearized ops, so they cost porcupine's cache nothing.
	reads, readsAtMax, hiddenReads int

	present bool // false: no live record
	done    bool // COMPLETED rather than IN_PROGRESS
	holder  int  // the client whose Claim granted token, or anyHolder

	token, attempt, created, lease, expires, completed val

	fpKnown bool
	fp      string

	respKnown bool
	code      int32
	body      string
}

func absentAt(now, maxToken int64) kstate {
	return kstate{now: now, maxToken: maxToken, holder: anyHolder}
}

// fromRecord is the state a revealed record pins down exactly.
func fromRecord(r *history.Record, now, maxToken int64, holder int) kstate {
	s := kstate{
		now:       max(now, r.CreatedAt, r.CompletedAt),
		maxToken:  max(maxToken, int64(r.Token)),
		present:   true,
		done:      recDone(r),
		holder:    holder,
		token:     exactly(int64(r.Token)),
		attempt:   exactly(int64(r.Attempt)),
		created:   exactly(r.CreatedAt),
		lease:     exactly(r.LeaseExpiresAt),
		expires:   exactly(r.ExpiresAt),
		completed: exactly(r.CompletedAt),
		fpKnown:   true,
		fp:        string(r.Fingerprint),
	}
	if s.done {
		s.respKnown, s.code, s.body = true, r.ResponseCode, string(r.ResponseBody)
	}
	return s
}

func recDone(r *history.Record) bool {
	return strings.TrimPrefix(r.State, "STATE_") == "COMPLETED"
}

func recInProgress(r *history.Record) bool {
	return strings.TrimPrefix(r.State, "STATE_") == "IN_PROGRESS"
}

func outcome(op *history.Op) string { return strings.TrimPrefix(op.Outcome, "OUTCOME_") }

// fingerprintsDiffer is storage's rule: both set and different.
func fingerprintsDiffer(a, b string) bool { return a != "" && b != "" && a != b }

// addSat returns a+b for b >= 0, saturating at MaxInt64, as storage does.
func addSat(a, b int64) int64 {
	if b > 0 && a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

func sameResponse(code int32, body string, r *history.Record) bool {
	return code == r.ResponseCode && body == string(r.ResponseBody)
}

// see unifies s with the record op's output showed as the current one at
// some log time >= s.now. It fails when the record cannot be s.
//
// A hidden token (hidesToken) is unknown: see neither checks nor learns it
// (nor raises maxToken), and checks every other field as usual.
func see(s kstate, op *history.Op) (kstate, bool) {
	r := op.Record
	if !s.present || recDone(r) != s.done || (!s.done && !recInProgress(r)) {
		return s, false
	}
	// The read happened at a log time >= now while the record was live.
	if r.ExpiresAt <= s.now || r.LeaseExpiresAt > r.ExpiresAt {
		return s, false
	}
	hidden := hidesToken(op)
	tok := int64(r.Token)
	if (!hidden && !s.token.admits(tok)) || !s.attempt.admits(int64(r.Attempt)) || !s.created.admits(r.CreatedAt) ||
		!s.lease.admits(r.LeaseExpiresAt) || !s.expires.admits(r.ExpiresAt) {
		return s, false
	}
	if !hidden {
		s.token = exactly(tok)
		s.maxToken = max(s.maxToken, tok)
	}
	s.attempt, s.created = exactly(int64(r.Attempt)), exactly(r.CreatedAt)
	s.lease, s.expires = exactly(r.LeaseExpiresAt), exactly(r.ExpiresAt)
	s.now = max(s.now, r.CreatedAt) // created_at is a log time that has passed
	if s.fpKnown && s.fp != string(r.Fingerprint) {
		return s, false
	}
	s.fpKnown, s.fp = true, string(r.Fingerprint)
	if !s.done {
		return s, r.CompletedAt == 0
	}
	if !s.completed.admits(r.CompletedAt) {
		return s, false
	}
	s.completed = exactly(r.CompletedAt)
	s.now = max(s.now, r.CompletedAt)
	if s.respKnown && !sameResponse(s.code, s.body, r) {
		return s, false
	}
	s.respKnown, s.code, s.body = true, r.ResponseCode, string(r.ResponseBody)
	return s, true
}

// expiryBranches returns the states s may be in at the log time of the next
// command: with its record live, or past expires_at and so absent.
func expiryBranches(s kstate) []kstate {
	if s.top || !s.present {
		return []kstate{s}
	}
	out := make([]kstate, 0, 2)
	if !s.expires.exact || s.expires.v > s.now {
		out = append(out, s)
	}
	return append(out, absentAt(max(s.now, s.expires.v), s.maxToken))
}

// leaseMayBeLive reports whether the lease of s may be live at a log time
// >= s.now.
func leaseMayBeLive(s kstate) bool { return !s.lease.exact || s.lease.v > s.now }

// tokenMay reports whether the current token may be tok, and the state with
// the token learnt if so.
func tokenMay(s kstate, tok uint64) (kstate, bool) {
	if !s.present || !s.token.admits(int64(tok)) {
		return s, false
	}
	s.token = exactly(int64(tok))
	s.maxToken = max(s.maxToken, int64(tok))
	return s, true
}

// tokenMayNot reports whether the current token may differ from tok.
func tokenMayNot(s kstate, tok uint64) bool {
	return !s.token.exact || s.token.v != int64(tok)
}

// apply returns the states s may step to when op, with its observed output,
// is applied to s: the rules of storage/apply.go, read backwards from the
// output. s is the state at the command's log time (after expiry).
func apply(s kstate, op *history.Op) []kstate {
	if s.top {
		return []kstate{s}
	}
	switch op.Kind {
	case history.Claim:
		return applyClaim(s, op)
	case history.Complete:
		return applyComplete(s, op)
	case history.Release:
		return applyRelease(s, op)
	case history.Heartbeat:
		return applyHeartbeat(s, op)
	case history.Get:
		return applyGet(s, op)
	}
	return nil
}

func one(s kstate, ok bool) []kstate {
	if !ok {
		return nil
	}
	return []kstate{s}
}

func applyClaim(s kstate, op *history.Op) []kstate {
	fp := string(op.Fingerprint)
	if !s.present {
		if op.Result == history.OK && outcome(op) == "ACQUIRED" {
			return one(acquireFresh(s, op))
		}
		return nil
	}
	if op.Result == history.FingerprintMismatch {
		// NB: with the stored fingerprint unknown, a mismatch is possible
		// whenever the caller sent one (soundness over sharpness).
		mismatch := fp != "" && (!s.fpKnown || fingerprintsDiffer(s.fp, fp))
		return one(s, mismatch)
	}
	r := op.Record
	if op.Result != history.OK || (s.fpKnown && fingerprintsDiffer(s.fp, fp)) ||
		fingerprintsDiffer(string(r.Fingerprint), fp) {
		return nil
	}
	if s.done {
		if outcome(op) != "COMPLETED" {
			return nil
		}
		return one(see(s, op))
	}
	var out []kstate
	switch outcome(op) {
	case "IN_PROGRESS":
		if leaseMayBeLive(s) {
			if n, ok := see(s, op); ok && r.LeaseExpiresAt > n.now {
				out = append(out, n)
			}
		}
	case "ACQUIRED":
		// A retry of the request that holds the token answers ACQUIRED
		// with the record as it stands (apply.go's request-id check).
		// A ghost's grant is this request's own (an earlier application of
		// it), so it must show what this op's inputs grant.
		if s.holder == op.Client || (s.holder == anyHolder && grantConsistent(op)) {
			if n, ok := see(s, op); ok {
				n.holder = op.Client
				out = append(out, n)
			}
		}
		if n, ok := takeover(s, op); ok {
			out = append(out, n)
		}
	}
	return out
}

// acquireFresh checks an ACQUIRED over no live record.
func acquireFresh(s kstate, op *history.Op) (kstate, bool) {
	r := op.Record
	t := r.CreatedAt
	ok := recInProgress(r) && r.Attempt == 1 && t >= s.now && int64(r.Token) > s.maxToken &&
		r.CompletedAt == 0 && r.ExpiresAt > t && r.LeaseExpiresAt > t && grantConsistent(op)
	return fromRecord(r, t, s.maxToken, op.Client), ok
}

// grantConsistent reports whether an ACQUIRED record shows what op's
// inputs grant at the log time the record reveals: expires_at = T +
// retention, lease_expires_at = min(T + lease, expires_at), and for a fresh
// record the caller's fingerprint. A zero lease or retention is the
// server's default, unknown here.
func grantConsistent(op *history.Op) bool {
	r := op.Record
	if r.LeaseExpiresAt > r.ExpiresAt {
		return false
	}
	if r.Attempt == 1 && string(r.Fingerprint) != string(op.Fingerprint) {
		return false
	}
	t, known := claimTime(op)
	if !known {
		return true
	}
	if op.Retention > 0 && r.ExpiresAt != addSat(t, int64(op.Retention)) {
		return false
	}
	return op.Lease <= 0 || r.LeaseExpiresAt == min(addSat(t, int64(op.Lease)), r.ExpiresAt)
}

// claimTime returns the log time an ACQUIRED record reveals for the entry
// that granted it.
func claimTime(op *history.Op) (int64, bool) {
	r := op.Record
	switch {
	case r.Attempt == 1:
		return r.CreatedAt, true
	case op.Retention > 0 && r.ExpiresAt < math.MaxInt64:
		return r.ExpiresAt - int64(op.Retention), true
	case op.Lease > 0 && r.LeaseExpiresAt < r.ExpiresAt:
		return r.LeaseExpiresAt - int64(op.Lease), true
	}
	return 0, false
}

// takeover checks an ACQUIRED over an IN_PROGRESS record whose lease ended.
func takeover(s kstate, op *history.Op) (kstate, bool) {
	r := op.Record
	now := max(s.now, s.lease.v) // the lease ended: log time reached it
	if !recInProgress(r) || r.CompletedAt != 0 || int64(r.Token) <= s.maxToken ||
		!s.created.admits(r.CreatedAt) || r.LeaseExpiresAt > r.ExpiresAt || r.LeaseExpiresAt <= now {
		return s, false
	}
	if s.attempt.exact {
		if int64(r.Attempt) != min(s.attempt.v+1, math.MaxUint32) {
			return s, false
		}
	} else if int64(r.Attempt) < s.attempt.v+1 {
		return s, false
	}
	fp := string(op.Fingerprint)
	switch {
	case s.fpKnown && s.fp != "":
		if string(r.Fingerprint) != s.fp {
			return s, false
		}
	case s.fpKnown || fp != "":
		if string(r.Fingerprint) != fp {
			return s, false
		}
	}
	if r.Attempt == 1 { // a takeover bumps attempt past 1
		return s, false
	}
	t, known := claimTime(op)
	if known {
		if t < now || (s.expires.exact && t >= s.expires.v) || r.ExpiresAt <= t {
			return s, false
		}
		now = t
	}
	if !grantConsistent(op) {
		return s, false
	}
	return fromRecord(r, now, s.maxToken, op.Client), true
}

func applyComplete(s kstate, op *history.Op) []kstate {
	switch op.Result {
	case history.ClaimLost:
		return one(s, !s.present || tokenMayNot(s, op.Token))
	case history.OK:
	default:
		return nil
	}
	s, ok := tokenMay(s, op.Token)
	if !ok {
		return nil
	}
	r := op.Record
	if s.done {
		// Complete is idempotent: the stored record, first response wins.
		return one(see(s, op))
	}
	t := r.CompletedAt
	ok = recDone(r) && int64(r.Token) == int64(op.Token) && t >= s.now &&
		(!s.expires.exact || t < s.expires.v) &&
		s.attempt.admits(int64(r.Attempt)) && s.created.admits(r.CreatedAt) &&
		(!s.fpKnown || s.fp == string(r.Fingerprint)) &&
		sameResponse(op.ResponseCode, string(op.ResponseBody), r) &&
		r.ExpiresAt > t && r.LeaseExpiresAt <= t
	if s.lease.exact {
		ok = ok && r.LeaseExpiresAt == min(s.lease.v, t)
	} else {
		ok = ok && r.LeaseExpiresAt >= min(s.lease.v, t)
	}
	// NB: history records Retention for Claims only, so a Complete's own
	// retention (which resets expires_at) is trusted only when set.
	if op.Retention > 0 {
		ok = ok && r.ExpiresAt == addSat(t, int64(op.Retention))
	}
	return one(fromRecord(r, t, s.maxToken, s.holder), ok)
}

func applyRelease(s kstate, op *history.Op) []kstate {
	switch op.Result {
	case history.OK:
		if !s.present {
			return []kstate{s}
		}
		if n, ok := tokenMay(s, op.Token); ok && !s.done {
			return []kstate{absentAt(n.now, n.maxToken)}
		}
	case history.AlreadyCompleted:
		return one(s, s.present && s.done)
	case history.ClaimLost:
		return one(s, s.present && !s.done && tokenMayNot(s, op.Token))
	}
	return nil
}

func applyHeartbeat(s kstate, op *history.Op) []kstate {
	switch op.Result {
	case history.AlreadyCompleted:
		return one(s, s.present && s.done)
	case history.ClaimLost:
		return one(s, !s.present || (!s.done && tokenMayNot(s, op.Token)))
	case history.OK:
	default:
		return nil
	}
	if s.done {
		return nil
	}
	s, ok := tokenMay(s, op.Token)
	if !ok {
		return nil
	}
	r := op.Record
	before := s.now
	s.lease = atLeast(math.MinInt64) // the heartbeat sets it: learn it below
	s, ok = see(s, op)
	if !ok || r.LeaseExpiresAt <= before {
		return nil
	}
	if l := int64(op.Lease); l > 0 {
		if r.LeaseExpiresAt < r.ExpiresAt {
			t := r.LeaseExpiresAt - l // lease_expires_at = T + lease
			if t < before {
				return nil
			}
			s.now = max(s.now, t)
		} else {
			s.now = max(s.now, r.ExpiresAt-l) // capped: T + lease >= expires_at
		}
	}
	return []kstate{s}
}

func applyGet(s kstate, op *history.Op) []kstate {
	switch op.Result {
	case history.NotFound:
		return one(s, !s.present)
	case history.OK:
		return one(see(s, op))
	}
	return nil
}

// sentResponse reports whether r shows the response Complete op sent.
func sentResponse(op *history.Op, r *history.Record) bool {
	return op.ResponseCode == r.ResponseCode && bytes.Equal(op.ResponseBody, r.ResponseBody)
}

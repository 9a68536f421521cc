package checker

import (
	"fmt"
	"sort"

	"github.com/keystore-dev/keystore/cluster-test/history"
)

// Ghost stages, in the order they may fire before one step. A chain in
// another order has no effect the model would miss: a claim ghost grants a
// token no client knows, so no heartbeat, release or complete ghost can act
// on its record afterwards; and a heartbeat ghost after a release or
// complete finds no IN_PROGRESS record of its token.
const (
	stageHeartbeat = iota
	stageEnd       // release or complete
	stageClaim
	numStages
)

// ghost is a write command that may apply (again) at an unknown log time:
// the first op of the history with its effect-relevant inputs.
type ghost struct {
	op   *history.Op
	call int64 // wall clock: it may apply from here on
}

// ghostSet is a key's ghost sources.
type ghostSet struct {
	// claims are the Claim ghosts, by call.
	claims []ghost
	// byToken holds the Heartbeat (stageHeartbeat) and Release or Complete
	// (stageEnd) ghosts of each token, by call: only the current token's
	// can fire.
	byToken map[uint64]*[numStages][]ghost
	tokens  []uint64 // the keys of byToken, sorted
	// uniformFP: every Claim of the key sent fingerprint fp, so a record
	// granted by a ghost has it too.
	uniformFP bool
	fp        string
}

// newGhostSet collects every write of one key's ops (whatever its result:
// a determinate write may have been applied twice) as ghost sources,
// keeping one per distinct effect.
func newGhostSet(ops []*history.Op) *ghostSet {
	g := &ghostSet{uniformFP: true, byToken: map[uint64]*[numStages][]ghost{}}
	first := true
	seen := map[string]bool{}
	sorted := append([]*history.Op(nil), ops...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Call < sorted[j].Call })
	for _, op := range sorted {
		var stage int
		var sig string
		switch op.Kind {
		case history.Heartbeat:
			stage, sig = stageHeartbeat, fmt.Sprintf("h/%d/%d", op.Token, op.Lease)
		case history.Release:
			stage, sig = stageEnd, fmt.Sprintf("r/%d", op.Token)
		case history.Complete:
			stage, sig = stageEnd, fmt.Sprintf("c/%d/%d/%d/%q", op.Token, op.Retention, op.ResponseCode, op.ResponseBody)
		case history.Claim:
			stage, sig = stageClaim, fmt.Sprintf("a/%q/%d/%d", op.Fingerprint, op.Lease, op.Retention)
			if first {
				g.fp, first = string(op.Fingerprint), false
			} else if g.fp != string(op.Fingerprint) {
				g.uniformFP = false
			}
		default:
			continue
		}
		if seen[sig] {
			continue
		}
		seen[sig] = true
		gh := ghost{op: op, call: op.Call}
		if stage == stageClaim {
			g.claims = append(g.claims, gh)
			continue
		}
		t := g.byToken[op.Token]
		if t == nil {
			t = new([numStages][]ghost)
			g.byToken[op.Token] = t
			g.tokens = append(g.tokens, op.Token)
		}
		t[stage] = append(t[stage], gh)
	}
	sort.Slice(g.tokens, func(i, j int) bool { return g.tokens[i] < g.tokens[j] })
	return g
}

// claimsUpTo returns how many Claim ghosts may have applied by wall time t.
//
// NB: a ghost counts if its op was called by the Return of the op being
// stepped, a moment at or after that op's linearization point: this lets
// a ghost fire a little early, never too late (soundness over sharpness).
func (g *ghostSet) claimsUpTo(t int64) int {
	return sort.Search(len(g.claims), func(i int) bool { return g.claims[i].call > t })
}

// each calls fn with every ghost of stage st, called by wall time by, that
// may act on s.
func (g *ghostSet) each(st int, s kstate, by int64, nClaims int, fn func(*history.Op)) {
	if s.top {
		return
	}
	if st == stageClaim {
		for _, gh := range g.claims[:nClaims] {
			fn(gh.op)
		}
		return
	}
	if !s.present || s.done {
		return
	}
	visit := func(tok uint64) {
		for _, gh := range g.byToken[tok][st] {
			if gh.call > by {
				return
			}
			fn(gh.op)
		}
	}
	if s.token.exact {
		if s.token.v >= 0 && g.byToken[uint64(s.token.v)] != nil {
			visit(uint64(s.token.v))
		}
		return
	}
	// An unknown token: any presented token it admits.
	lo := uint64(max(s.token.v, 0))
	for _, tok := range g.tokens[sort.Search(len(g.tokens), func(i int) bool { return g.tokens[i] >= lo }):] {
		visit(tok)
	}
}

// fire returns the state s steps to if g's command applies to it now with
// an unknown log time >= s.now, and false if it would change nothing.
//
// A ghost's outputs are unknown, so what it sets is known only as a lower
// bound. NB: firing one ghost in place of a chain of ghosts of the same
// stage loses nothing only because the bounds are lax (attempt >= n+1, not
// = n+1; holder unknown): soundness over sharpness.
func (g *ghostSet) fire(s kstate, op *history.Op) (kstate, bool) {
	if s.top {
		return s, false
	}
	switch op.Kind {
	case history.Claim:
		return g.fireClaim(s, op)
	case history.Heartbeat:
		if !s.present || s.done {
			return s, false
		}
		n, ok := tokenMay(s, op.Token)
		if !ok {
			return s, false
		}
		// lease = min(T + lease, expires_at) with T >= now and both terms > T.
		n.lease = atLeast(min(n.now+max(int64(op.Lease), 1), max(n.expires.v, n.now+1)))
		return n, true
	case history.Release:
		if !s.present || s.done {
			return s, false
		}
		n, ok := tokenMay(s, op.Token)
		return absentAt(n.now, n.maxToken), ok
	case history.Complete:
		if !s.present || s.done {
			return s, false
		}
		n, ok := tokenMay(s, op.Token)
		if !ok {
			return s, false
		}
		n.done = true
		n.completed = atLeast(n.now)
		// lease = min(lease, T) with T >= now.
		switch {
		case n.lease.exact && n.lease.v <= n.now:
		case n.lease.exact:
			n.lease = atLeast(n.now)
		default:
			n.lease = atLeast(min(n.lease.v, n.now))
		}
		n.expires = atLeast(n.now + max(int64(op.Retention), 1))
		n.respKnown, n.code, n.body = true, op.ResponseCode, string(op.ResponseBody)
		return n, true
	}
	return s, false
}

func (g *ghostSet) fireClaim(s kstate, op *history.Op) (kstate, bool) {
	if s.present && s.done {
		return s, false
	}
	n := kstate{present: true, holder: anyHolder, maxToken: s.maxToken, now: s.now}
	if s.present {
		if s.fpKnown && fingerprintsDiffer(s.fp, string(op.Fingerprint)) {
			return s, false
		}
		n.now = max(s.now, s.lease.v) // a takeover waits for the lease to end
		if s.expires.exact && n.now >= s.expires.v {
			return s, false // expired: the expiry branch grants afresh
		}
		n.attempt = atLeast(s.attempt.v + 1)
		n.created = s.created
	} else {
		n.attempt = atLeast(1)
		n.created = atLeast(s.now)
	}
	n.token = atLeast(s.maxToken + 1)
	n.expires = atLeast(addSat(n.now, max(int64(op.Retention), 1)))
	n.lease = atLeast(min(addSat(n.now, max(int64(op.Lease), 1)), n.expires.v))
	n.completed = exactly(0)
	switch {
	case s.present && s.fpKnown && s.fp != "":
		n.fpKnown, n.fp = true, s.fp
	case g.uniformFP:
		n.fpKnown, n.fp = true, g.fp
	}
	return n, true
}

package checker

import (
	"bytes"
	"fmt"
	"math"
	"sort"

	"github.com/keystore-dev/keystore/cluster-test/history"
)

// invariants runs the direct checks: each looks for a pattern of ops that
// no legal execution produces, judging order by revealed log times where it
// can and by the wall clock (one op returned before another was called)
// where it must. Unlike the model they need no search.
type invariants struct {
	h *indexed
	// evidence is every op whose output reveals the log time its own
	// command applied at, by call; suffixMin[i] is the smallest such time
	// among evidence[i:].
	evidence  []timed
	suffixMin []int64
}

type timed struct {
	op *history.Op
	t  int64
}

func newInvariants(h *indexed) *invariants {
	inv := &invariants{h: h}
	for _, k := range h.keys {
		for _, op := range k.linear {
			if t, ok := ownTime(k, op); ok {
				inv.evidence = append(inv.evidence, timed{op, t})
			}
		}
	}
	sort.Slice(inv.evidence, func(i, j int) bool { return inv.evidence[i].op.Call < inv.evidence[j].op.Call })
	inv.suffixMin = make([]int64, len(inv.evidence)+1)
	inv.suffixMin[len(inv.evidence)] = math.MaxInt64
	for i := len(inv.evidence) - 1; i >= 0; i-- {
		inv.suffixMin[i] = min(inv.suffixMin[i+1], inv.evidence[i].t)
	}
	return inv
}

// t renders a log time for a finding.
func (inv *invariants) t(x int64) string { return logTime(x, inv.h.base) }

// ownTime returns the log time op's own command applied at (any of its
// applications: all follow its call), when its output reveals it.
func ownTime(k *keyOps, op *history.Op) (int64, bool) {
	r := op.Record
	if op.Result != history.OK || r == nil {
		return 0, false
	}
	switch op.Kind {
	case history.Claim:
		if outcome(op) == "ACQUIRED" {
			return claimTime(op)
		}
	case history.Heartbeat:
		if op.Lease > 0 && r.LeaseExpiresAt < r.ExpiresAt {
			return r.LeaseExpiresAt - int64(op.Lease), true
		}
	case history.Complete:
		// completed_at is this op's time only if no other Complete of the
		// token could have completed the record.
		for _, o := range k.all {
			if o != op && o.Kind == history.Complete && o.Token == op.Token {
				return 0, false
			}
		}
		if recDone(r) && r.Token == op.Token {
			return r.CompletedAt, true
		}
	}
	return 0, false
}

// earliestAfter returns the smallest log time an op called after wall time
// t reveals for itself, and that op.
func (inv *invariants) earliestAfter(t int64) (int64, *history.Op) {
	i := sort.Search(len(inv.evidence), func(i int) bool { return inv.evidence[i].op.Call > t })
	m := inv.suffixMin[i]
	for ; i < len(inv.evidence); i++ {
		if inv.evidence[i].t == m {
			return m, inv.evidence[i].op
		}
	}
	return m, nil
}

func isAcquired(op *history.Op) bool {
	return op.Kind == history.Claim && op.Result == history.OK && op.Record != nil && outcome(op) == "ACQUIRED"
}

// views returns a key's ops whose determinate output shows a record, or
// NOT_FOUND for a Get; stale Gets too if stale.
func views(k *keyOps, class map[*history.Op]opClass, stale bool) []*history.Op {
	var out []*history.Op
	for _, op := range k.all {
		c := class[op]
		if (c == classLinear || (stale && c == classStale)) && (op.Record != nil || op.Kind == history.Get) &&
			(op.Result == history.OK || op.Result == history.NotFound) {
			out = append(out, op)
		}
	}
	return out
}

// reveal is a lease end shown for a token, at a log time known (t) or only
// known to precede wall time before.
type reveal struct {
	op     *history.Op
	t      int64
	tKnown bool
	lease  int64
}

// doubleAcquire finds ACQUIRED claims granted while an older token's lease
// was live: a lease end L shown for token X at log time t <= T (the second
// claim's time) with T < L, X neither completed nor released before T.
//
// NB: a Heartbeat with a shorter lease than the one that set L could have
// cut it, so tokens whose Claim and Heartbeats differ in lease are skipped;
// so are tokens a Release or an unresolved Complete may have ended before
// T (soundness over sharpness).
func (inv *invariants) doubleAcquire() []Finding {
	var out []Finding
	for _, k := range inv.h.keys {
		var acqs []*history.Op
		reveals := map[uint64][]reveal{}
		completedAt := map[uint64]int64{}
		leases := map[uint64]map[int64]bool{}
		addLease := func(tok uint64, l int64) {
			if leases[tok] == nil {
				leases[tok] = map[int64]bool{}
			}
			leases[tok][l] = true
		}
		for _, op := range k.all {
			if op.Kind == history.Heartbeat {
				addLease(op.Token, int64(op.Lease))
			}
			if inv.h.class[op] != classLinear || op.Record == nil || op.Result != history.OK {
				continue
			}
			r := op.Record
			if recDone(r) {
				completedAt[r.Token] = r.CompletedAt
				continue
			}
			switch {
			case isAcquired(op):
				acqs = append(acqs, op)
				addLease(r.Token, int64(op.Lease))
				t, ok := claimTime(op)
				reveals[r.Token] = append(reveals[r.Token], reveal{op, t, ok, r.LeaseExpiresAt})
			case op.Kind == history.Heartbeat && r.Token == op.Token:
				t, ok := ownTime(k, op)
				reveals[r.Token] = append(reveals[r.Token], reveal{op, t, ok, r.LeaseExpiresAt})
			case op.Kind == history.Claim || op.Kind == history.Get:
				// NB: a hidden token is filed under the token of its
				// generation, or nowhere.
				if x, ok := k.gens.tokenOf(op); ok {
					reveals[x] = append(reveals[x], reveal{op: op, lease: r.LeaseExpiresAt})
				}
			}
		}
	next:
		for _, b := range acqs {
			y := b.Record.Token
			for _, a := range acqs {
				if a.Record.Token == y && a.Client != b.Client && a.ID < b.ID {
					out = append(out, Finding{k.key, []int{b.ID, a.ID},
						fmt.Sprintf("clients %d and %d were both ACQUIRED token %d", b.Client, a.Client, y)})
					continue next
				}
			}
			tb, ok := claimTime(b)
			if !ok {
				continue
			}
			fresh := b.Record.Attempt == 1
			for _, a := range acqs {
				x := a.Record.Token
				if x >= y || len(leases[x]) != 1 || !inv.mayHold(k, x, b, tb, fresh, completedAt) {
					continue
				}
				for _, rv := range reveals[x] {
					before := (rv.tKnown && rv.t <= tb) || (!rv.tKnown && rv.op.Return < b.Call)
					if before && tb < rv.lease {
						ids := []int{b.ID, a.ID}
						if rv.op != a {
							ids = append(ids, rv.op.ID)
						}
						out = append(out, Finding{k.key, ids, fmt.Sprintf(
							"token %d ACQUIRED at log time %s while token %d's lease (shown by op %d) ran to %s",
							y, inv.t(tb), x, rv.op.ID, inv.t(rv.lease))})
						continue next
					}
				}
			}
		}
	}
	return out
}

// mayHold reports whether token x surely was not completed or released
// before log time tb, when Claim b was granted another token.
func (inv *invariants) mayHold(k *keyOps, x uint64, b *history.Op, tb int64, fresh bool, completedAt map[uint64]int64) bool {
	if tc, ok := completedAt[x]; ok {
		return tc > tb
	}
	for _, op := range k.all {
		if op.Token != x || op.Call >= b.Return {
			continue
		}
		switch op.Kind {
		case history.Release:
			return false
		case history.Complete:
			// A Complete answered CLAIM_LOST may still have completed the
			// record (a duplicate answered after it expired), which only
			// a fresh grant could follow.
			if op.Result != history.ClaimLost || fresh {
				return false
			}
		}
	}
	return true
}

// ack is an acknowledged Complete: the record it stored.
type ack struct {
	op *history.Op
	r  *history.Record
}

func acks(k *keyOps) []ack {
	var out []ack
	for _, op := range k.all {
		if op.Kind == history.Complete && op.Result == history.OK && op.Record != nil &&
			recDone(op.Record) && op.Record.Token == op.Token {
			out = append(out, ack{op, op.Record})
		}
	}
	return out
}

// lostCompletions finds reads called after an acknowledged Complete (of
// token X, expiring at E) that show the completion gone before E: an older
// token, X IN_PROGRESS, a newer record created before E (with its token
// hidden: any IN_PROGRESS record created before E), or NOT_FOUND when
// a later op proves log time had not reached E (it reveals an earlier own
// time, or still shows X's record). Linearizable Gets among them that show
// NOT_FOUND or an older state are stale reads too.
func (inv *invariants) lostCompletions() (lost, stale []Finding) {
	for _, k := range inv.h.keys {
		as := acks(k)
		if len(as) == 0 {
			continue
		}
		vs := views(k, inv.h.class, false)
		for _, r := range vs {
			if r.Kind != history.Claim && r.Kind != history.Get {
				continue
			}
			for _, a := range as {
				if r.Call <= a.op.Return {
					continue
				}
				x, e := a.r.Token, a.r.ExpiresAt
				var detail string
				older := false
				switch rec := r.Record; {
				case rec == nil:
					if t, o := inv.earliestAfter(r.Return); t < e {
						detail, older = fmt.Sprintf("NOT_FOUND, yet op %d called after it applied at log time %s < expires_at %s", o.ID, inv.t(t), inv.t(e)), true
					} else if o := laterCompleted(vs, x, r.Return); o != nil {
						detail, older = fmt.Sprintf("NOT_FOUND, yet op %d called after it still shows token %d COMPLETED", o.ID, x), true
					}
				case hidesToken(r):
					// Any IN_PROGRESS record shows the completion lost
					// unless it is a later lineage's, created at or after
					// expires_at: older records were created before the
					// completion. The generation tells older from newer.
					if rec.CreatedAt < e {
						older = !generationOf(a.r).less(generationOf(rec))
						detail = fmt.Sprintf("an IN_PROGRESS record (token hidden, attempt %d) created at %s, before expires_at %s",
							rec.Attempt, inv.t(rec.CreatedAt), inv.t(e))
					}
				case rec.Token < x:
					detail, older = fmt.Sprintf("older token %d", rec.Token), true
				case rec.Token == x && !recDone(rec):
					detail, older = fmt.Sprintf("token %d IN_PROGRESS", x), true
				case rec.Token > x && rec.CreatedAt < e:
					detail = fmt.Sprintf("token %d created at %s, before expires_at %s", rec.Token, inv.t(rec.CreatedAt), inv.t(e))
				}
				if detail == "" {
					continue
				}
				f := Finding{k.key, []int{r.ID, a.op.ID}, fmt.Sprintf(
					"%s %s after token %d's Complete was acknowledged", r.Kind, detail, x)}
				lost = append(lost, f)
				if older && r.Kind == history.Get {
					stale = append(stale, f)
				}
				break
			}
		}
	}
	return lost, stale
}

// laterCompleted returns a view called after wall time t that shows token
// x COMPLETED.
func laterCompleted(vs []*history.Op, x uint64, t int64) *history.Op {
	for _, v := range vs {
		if v.Call > t && v.Record != nil && v.Record.Token == x && recDone(v.Record) {
			return v
		}
	}
	return nil
}

// replayMismatches finds COMPLETED records (stale Gets included: a
// completed response never changes) whose response differs from the one
// the first acknowledged Complete of the token shows, or that no Complete
// of the token sent.
func (inv *invariants) replayMismatches() []Finding {
	var out []Finding
	for _, k := range inv.h.keys {
		byTok := map[uint64][]*history.Op{}
		var toks []uint64
		for _, v := range views(k, inv.h.class, true) {
			if v.Record != nil && recDone(v.Record) {
				if byTok[v.Record.Token] == nil {
					toks = append(toks, v.Record.Token)
				}
				byTok[v.Record.Token] = append(byTok[v.Record.Token], v)
			}
		}
		as := acks(k)
		for _, x := range toks {
			vs := byTok[x]
			ref := vs[0]
			for _, v := range vs {
				if v.Return < ref.Return {
					ref = v
				}
			}
			for _, a := range as {
				if a.r.Token == x && (ref.Kind != history.Complete || a.op.Return < ref.Return) {
					ref = a.op
				}
			}
			sent := false
			for _, op := range k.all {
				if op.Kind == history.Complete && op.Token == x && sentResponse(op, ref.Record) {
					sent = true
				}
			}
			if !sent {
				out = append(out, Finding{k.key, []int{ref.ID}, fmt.Sprintf(
					"token %d COMPLETED with response %d:%q, which no Complete sent", x, ref.Record.ResponseCode, ref.Record.ResponseBody)})
			}
			for _, v := range vs {
				if v != ref && (v.Record.ResponseCode != ref.Record.ResponseCode || !bytes.Equal(v.Record.ResponseBody, ref.Record.ResponseBody)) {
					out = append(out, Finding{k.key, []int{v.ID, ref.ID}, fmt.Sprintf(
						"token %d replayed %d:%q; op %d shows %d:%q", x, v.Record.ResponseCode, v.Record.ResponseBody,
						ref.ID, ref.Record.ResponseCode, ref.Record.ResponseBody)})
				}
			}
		}
	}
	return out
}

// identity is what stays fixed of a token's record in one state.
type identity struct {
	key                string
	token              uint64
	done               bool
	created, completed int64
	expires            int64
	attempt            uint32
	fingerprint        string
	shownBy            int // the op that showed it
}

func identityOf(key string, op *history.Op) identity {
	r := op.Record
	id := identity{done: recDone(r), created: r.CreatedAt, expires: r.ExpiresAt, attempt: r.Attempt,
		fingerprint: string(r.Fingerprint), token: r.Token, key: key, shownBy: op.ID}
	if id.done {
		id.completed = r.CompletedAt
	}
	return id
}

func (a identity) same(b identity) bool {
	return a.done == b.done && a.created == b.created && a.completed == b.completed && a.expires == b.expires &&
		a.attempt == b.attempt && a.fingerprint == b.fingerprint && a.token == b.token && a.key == b.key
}

// stalePhantoms finds stale Gets showing a record state that never
// existed: a token's IN_PROGRESS or COMPLETED record with other fixed
// fields (created_at, attempt, fingerprint, expires_at, completed_at) than
// linearizable outputs show, or a token another key owns.
//
// A record whose token is hidden (hidesToken) is known by its generation
// instead, when that is a single record (generations.oneRecord): its
// expires_at and fingerprint are fixed too. Its token is not compared, nor
// its key's claim to it.
func (inv *invariants) stalePhantoms() []Finding {
	type tokState struct {
		tok  uint64
		done bool
	}
	type keyGen struct {
		key string
		gen generation
	}
	known := map[tokState]identity{}
	live := map[keyGen]identity{} // IN_PROGRESS records by generation, token aside
	owner := map[uint64]string{}
	for _, k := range inv.h.keys {
		for _, v := range views(k, inv.h.class, false) {
			if v.Record == nil {
				continue
			}
			id := identityOf(k.key, v)
			if !id.done {
				kg := keyGen{k.key, generationOf(v.Record)}
				if _, ok := live[kg]; !ok {
					live[kg] = id
				}
			}
			if hidesToken(v) {
				continue
			}
			owner[id.token] = k.key
			if _, ok := known[tokState{id.token, id.done}]; !ok {
				known[tokState{id.token, id.done}] = id
			}
		}
	}
	var out []Finding
	for _, k := range inv.h.keys {
		for _, op := range k.all {
			if inv.h.class[op] != classStale || op.Record == nil {
				continue
			}
			id := identityOf(k.key, op)
			if hidesToken(op) {
				gen := generationOf(op.Record)
				if !k.gens.oneRecord(gen) {
					continue
				}
				if ref, ok := live[keyGen{k.key, gen}]; ok && (ref.expires != id.expires || ref.fingerprint != id.fingerprint) {
					out = append(out, Finding{k.key, []int{op.ID, ref.shownBy}, fmt.Sprintf(
						"stale get shows the record of attempt %d created at %s other than op %d does",
						id.attempt, inv.t(id.created), ref.shownBy)})
				}
				continue
			}
			if o, ok := owner[id.token]; ok && o != k.key {
				out = append(out, Finding{k.key, []int{op.ID}, fmt.Sprintf("stale get shows token %d of key %q", id.token, o)})
				continue
			}
			if ref, ok := known[tokState{id.token, id.done}]; ok && !ref.same(id) {
				out = append(out, Finding{k.key, []int{op.ID, ref.shownBy}, fmt.Sprintf(
					"stale get shows token %d's record other than op %d does", id.token, ref.shownBy)})
			}
		}
	}
	return out
}

package checker

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"

	"github.com/anishathalye/porcupine"
	"github.com/keystore-dev/keystore/cluster-test/history"
)

// maxStates bounds the possibilities the model tracks at one point of a
// linearization; past it the model widens to the state that accepts
// everything, and the key is reported as widened rather than checked.
const maxStates = 512

// call is a porcupine Operation's input: the op, and the ghosts that may
// fire before it.
type call struct {
	op      *history.Op
	ghosts  *ghostSet
	nClaims int // Claim ghosts that may fire: called by op.Return
	readers *readers
	reads   bool // op's output shows a current record with its token
	// hides: op's output shows a current record without its token
	// (hidesToken), whose token is in tokens.
	hides  bool
	tokens tokenRange
}

// readers is the tokens a key's linearizable outputs show as current, one
// per output, sorted.
//
// Tokens are log indexes, so once a token is granted no smaller one is
// ever current again: every op that shows token X as current is
// linearized before any larger token is revealed. The model checks this
// whenever maxToken rises, which cuts off early the linearizations that
// grant a token before the reads of older tokens, and that porcupine would
// otherwise explore exhaustively before backtracking.
//
// An output that hides a token its generation does not tell (see
// operations) is not a read of any token here. Its token is bounded
// instead, from what the record shows (hiddenBounds): an op showing a token
// at most hi is linearized before any token above hi is revealed too, and
// those hi are in hidden; and its token being current, it reveals lo.
type readers struct {
	shown  []int64 // the tokens shown
	hidden []int64 // the upper bounds of the hidden tokens that have one
}

// newReaders returns ops' readers, and per op (by index) the range of its
// hidden token, anyToken when its output does not hide one.
func newReaders(ops []*history.Op) (*readers, []tokenRange) {
	var r readers
	for _, op := range ops {
		if shows(op) && !hidesToken(op) {
			r.shown = append(r.shown, int64(op.Record.Token))
		}
	}
	bounds := hiddenBounds(ops)
	for _, b := range bounds {
		if b.hi != math.MaxInt64 {
			r.hidden = append(r.hidden, b.hi)
		}
	}
	slices.Sort(r.shown)
	slices.Sort(r.hidden)
	return &r, bounds
}

// below returns how many outputs show a token smaller than tok.
func (r *readers) below(tok int64) int {
	n, _ := slices.BinarySearch(r.shown, tok)
	return n
}

// hiddenBelow returns how many hidden tokens are bounded by less than tok.
func (r *readers) hiddenBelow(tok int64) int {
	n, _ := slices.BinarySearch(r.hidden, tok)
	return n
}

// shows reports whether a linearizable op's output shows the record
// current at its linearization point.
func shows(op *history.Op) bool { return op.Result == history.OK && op.Record != nil }

// step returns every state s may reach by firing ghosts and then applying
// c's op with its observed output.
func (c *call) step(s kstate) []kstate {
	pre := []kstate{s}
	for st := range numStages {
		next := append([]kstate(nil), pre...)
		for _, p := range pre {
			for _, q := range expiryBranches(p) {
				c.ghosts.each(st, q, c.op.Return, c.nClaims, func(g *history.Op) {
					if n, ok := c.ghosts.fire(q, g); ok {
						next = append(next, n)
					}
				})
			}
		}
		if len(next) > len(pre) {
			pre = prune(next)
		}
	}
	var out []kstate
	for _, p := range pre {
		for _, q := range expiryBranches(p) {
			out = append(out, apply(q, c.op)...)
		}
	}
	// Count this op's read, and when maxToken rose, require every read of
	// a smaller token to be linearized already.
	//
	// NB: a hidden token is known only to lie in c.tokens. The current
	// token is at least lo, so lo is revealed: maxToken stays at most the
	// current token, all its uses need. Reads of hidden tokens are counted
	// apart, and the check is only that at least as many of them are
	// linearized as have a bound below maxToken: a necessary condition (the
	// ones linearized may be others), so it never rejects a legal order.
	// An op whose hidden token is bounded below maxToken comes too late at
	// once.
	kept := out[:0]
	for _, n := range out {
		if n.top {
			kept = append(kept, n)
			continue
		}
		if c.hides {
			lo := c.tokens.lo
			if n.maxToken > c.tokens.hi || (n.token.exact && n.token.v < lo) {
				continue
			}
			if !n.token.exact {
				n.token.v = max(n.token.v, lo)
			}
			n.maxToken = max(n.maxToken, lo)
		}
		n.reads, n.readsAtMax, n.hiddenReads = s.reads, s.readsAtMax, s.hiddenReads
		if n.maxToken > s.maxToken {
			n.readsAtMax = 0
		}
		if c.reads {
			n.reads++
			if int64(c.op.Record.Token) == n.maxToken {
				n.readsAtMax++
			}
		}
		if c.hides && c.tokens.hi != math.MaxInt64 {
			n.hiddenReads++
		}
		if n.maxToken > s.maxToken && (c.readers.below(n.maxToken) != n.reads-n.readsAtMax ||
			n.hiddenReads < c.readers.hiddenBelow(n.maxToken)) {
			continue
		}
		kept = append(kept, n)
	}
	return kept
}

// prune removes duplicates and the states another one covers.
func prune(states []kstate) []kstate {
	out := make([]kstate, 0, len(states))
outer:
	for _, s := range states {
		if s.top {
			return []kstate{s}
		}
		for _, o := range out {
			if o.covers(s) {
				continue outer
			}
		}
		kept := out[:0]
		for _, o := range out {
			if !s.covers(o) {
				kept = append(kept, o)
			}
		}
		out = append(kept, s)
	}
	return out
}

// covers reports whether a is at least as permissive as b in every field:
// every history the model accepts from b, it accepts from a.
//
// NB: this holds because the rules are monotone in what the model knows
// only as lower bounds: a smaller now or bound, or an inexact
// value in place of an exact one, only ever admits more. holder is the
// exception (anyHolder demands a consistent grant, a client does not), so
// it must match. Keep it so when changing the rules: pruning subsumed
// states is what keeps chains of ghosts from growing the state set.
func (a kstate) covers(b kstate) bool {
	if a.top {
		return true
	}
	// NB: maxToken must match: with a smaller one, a later reveal would
	// face a token-order check the other state is past.
	if b.top || a.present != b.present || a.now > b.now || a.maxToken != b.maxToken ||
		a.reads != b.reads || a.readsAtMax != b.readsAtMax || a.hiddenReads != b.hiddenReads {
		return false
	}
	if !a.present {
		return true
	}
	return a.done == b.done && a.holder == b.holder &&
		a.token.covers(b.token) && a.attempt.covers(b.attempt) && a.created.covers(b.created) &&
		a.lease.covers(b.lease) && a.expires.covers(b.expires) && a.completed.covers(b.completed) &&
		(!a.fpKnown || (b.fpKnown && a.fp == b.fp)) &&
		(!a.respKnown || (b.respKnown && a.code == b.code && a.body == b.body))
}

// stateSet is the model's porcupine state: every state the key may be in.
type stateSet []kstate

func (s kstate) hash() uint64 {
	h := fnv.New64a()
	fmt.Fprint(h, s)
	return h.Sum64()
}

func newModel(base int64) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return stateSet{absentAt(0, 0)} },
		StepContext: func(ctx context.Context, state, input, _ any) (bool, any) {
			c := input.(*call)
			var next []kstate
			for _, s := range state.(stateSet) {
				if ctx.Err() != nil {
					return false, nil // porcupine is giving up: the answer is moot
				}
				next = append(next, c.step(s)...)
			}
			next = prune(next)
			if len(next) == 0 {
				return false, nil
			}
			if len(next) > maxStates {
				next = []kstate{{top: true}}
			}
			return true, stateSet(next)
		},
		Equal: func(a, b any) bool {
			x, y := a.(stateSet), b.(stateSet)
			if len(x) != len(y) {
				return false
			}
			in := make(map[kstate]bool, len(y))
			for _, s := range y {
				in[s] = true
			}
			for _, s := range x {
				if !in[s] {
					return false
				}
			}
			return true
		},
		Hash: func(state any) uint64 {
			var h uint64
			for _, s := range state.(stateSet) {
				h ^= s.hash()
			}
			return h
		},
		DescribeOperation: func(_, output any) string {
			return describeOp(output.(*history.Op), base) // as observed, not as the model reads it
		},
		DescribeState: func(state any) string {
			var parts []string
			for _, s := range state.(stateSet) {
				parts = append(parts, describeState(s, base))
			}
			return strings.Join(parts, " | ")
		},
		DescribeOperationMetadata: func(meta any) string {
			op, ok := meta.(*history.Op)
			if !ok {
				return ""
			}
			s := fmt.Sprintf("op %d, client %d, node %s", op.ID, op.Client, op.Node)
			if op.Error != "" {
				s += ": " + op.Error
			}
			return s
		},
	}
}

// widened reports whether a state set gave up precision.
func widened(set stateSet) bool { return len(set) == 1 && set[0].top }

// operations turns one key's linearizable ops into porcupine operations.
//
// The model reads an output that hides its token (hidesToken) as showing
// the token of its generation when that is known (generations.tokenOf):
// that read is then as sharp as any other, and only the rest are left with
// an unknown token.
func operations(k *keyOps) []porcupine.Operation {
	ops := make([]*history.Op, len(k.linear))
	for i, op := range k.linear {
		ops[i] = op
		if !hidesToken(op) {
			continue
		}
		if tok, ok := k.gens.tokenOf(op); ok {
			view, r := *op, *op.Record
			r.Token = tok
			view.Record = &r
			ops[i] = &view
		}
	}
	out := make([]porcupine.Operation, 0, len(ops))
	rs, bounds := newReaders(ops)
	for i, op := range ops {
		c := &call{op: op, ghosts: k.ghosts, nClaims: k.ghosts.claimsUpTo(op.Return), readers: rs,
			reads: shows(op) && !hidesToken(op), hides: shows(op) && hidesToken(op), tokens: bounds[i]}
		observed := k.linear[i] // for people: what the output showed
		out = append(out, porcupine.Operation{
			ClientId: max(observed.Client, 0),
			Input:    c,
			Call:     observed.Call,
			Output:   observed,
			Return:   observed.Return,
			Metadata: observed,
		})
	}
	return out
}

// describeOp renders an op for people: kind, inputs, result, record.
// Log times are shown relative to base, in seconds.
func describeOp(op *history.Op, base int64) string {
	var b strings.Builder
	b.WriteString(string(op.Kind))
	var in []string
	if len(op.Fingerprint) > 0 {
		in = append(in, fmt.Sprintf("fp=%q", op.Fingerprint))
	}
	if op.Token != 0 {
		in = append(in, fmt.Sprintf("tok=%d", op.Token))
	}
	if op.Lease != 0 {
		in = append(in, "lease="+op.Lease.String())
	}
	if op.Retention != 0 {
		in = append(in, "ret="+op.Retention.String())
	}
	if op.Kind == history.Complete {
		in = append(in, fmt.Sprintf("resp=%d:%q", op.ResponseCode, op.ResponseBody))
	}
	if op.Stale {
		in = append(in, "stale")
	}
	fmt.Fprintf(&b, "(%s) → %s", strings.Join(in, " "), op.Result)
	if op.Outcome != "" {
		b.WriteString(" " + outcome(op))
	}
	if op.Record != nil {
		b.WriteString(" " + describeRecord(op.Record, base))
	}
	return b.String()
}

func describeRecord(r *history.Record, base int64) string {
	tok := fmt.Sprint(r.Token)
	if r.Token == 0 && recInProgress(r) {
		tok = "?" // hidden (hidesToken)
	}
	s := fmt.Sprintf("{%s tok=%s #%d created=%s lease=%s exp=%s", strings.TrimPrefix(r.State, "STATE_"),
		tok, r.Attempt, logTime(r.CreatedAt, base), logTime(r.LeaseExpiresAt, base), logTime(r.ExpiresAt, base))
	if len(r.Fingerprint) > 0 {
		s += fmt.Sprintf(" fp=%q", r.Fingerprint)
	}
	if recDone(r) {
		s += fmt.Sprintf(" done=%s resp=%d:%q", logTime(r.CompletedAt, base), r.ResponseCode, r.ResponseBody)
	}
	return s + "}"
}

func describeState(s kstate, base int64) string {
	switch {
	case s.top:
		return "⊤ (widened: anything goes)"
	case !s.present:
		return fmt.Sprintf("absent (now≥%s)", logTime(s.now, base))
	}
	state := "IN_PROGRESS"
	if s.done {
		state = "COMPLETED"
	}
	holder := "?"
	if s.holder != anyHolder {
		holder = fmt.Sprint(s.holder)
	}
	out := fmt.Sprintf("%s tok%s att%s created%s lease%s exp%s holder=%s now≥%s",
		state, num(s.token), num(s.attempt), tval(s.created, base), tval(s.lease, base),
		tval(s.expires, base), holder, logTime(s.now, base))
	if s.fpKnown && s.fp != "" {
		out += fmt.Sprintf(" fp=%q", s.fp)
	} else if !s.fpKnown {
		out += " fp=?"
	}
	if s.done {
		out += " done" + tval(s.completed, base)
		if s.respKnown {
			out += fmt.Sprintf(" resp=%d:%q", s.code, s.body)
		}
	}
	return out
}

func num(v val) string {
	if v.exact {
		return fmt.Sprintf("=%d", v.v)
	}
	return fmt.Sprintf("≥%d", v.v)
}

func tval(v val, base int64) string {
	if v.exact {
		return "=" + logTime(v.v, base)
	}
	return "≥" + logTime(v.v, base)
}

// logTime renders a log time relative to base.
func logTime(t, base int64) string {
	switch {
	case t == math.MaxInt64:
		return "∞"
	case t == 0 || base == 0:
		return fmt.Sprint(t)
	}
	return fmt.Sprintf("%+.3fs", float64(t-base)/1e9)
}

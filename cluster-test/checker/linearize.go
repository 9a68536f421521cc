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
	reads   bool // op's output shows a current record
}

// readers is the tokens a key's linearizable outputs show as current, one
// per output, sorted.
//
// Tokens are log indexes, so once a token is granted no smaller one is
// ever current again: every op that shows token X as current is
// linearized before any larger token is revealed. The model checks this
// whenever maxToken rises, which cuts off early the linearizations that
// grant a token before the reads of older ones, and that porcupine would
// otherwise explore exhaustively before backtracking.
type readers []int64

func newReaders(ops []*history.Op) *readers {
	var r readers
	for _, op := range ops {
		if shows(op) {
			r = append(r, int64(op.Record.Token))
		}
	}
	slices.Sort(r)
	return &r
}

// below returns how many outputs show a token smaller than tok.
func (r readers) below(tok int64) int {
	n, _ := slices.BinarySearch(r, tok)
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
	kept := out[:0]
	for _, n := range out {
		if n.top {
			kept = append(kept, n)
			continue
		}
		n.reads, n.readsAtMax = s.reads, s.readsAtMax
		if n.maxToken > s.maxToken {
			n.readsAtMax = 0
		}
		if c.reads {
			n.reads++
			if int64(c.op.Record.Token) == n.maxToken {
				n.readsAtMax++
			}
		}
		if n.maxToken > s.maxToken && c.readers.below(n.maxToken) != n.reads-n.readsAtMax {
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
		a.reads != b.reads || a.readsAtMax != b.readsAtMax {
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
		DescribeOperation: func(input, _ any) string {
			return describeOp(input.(*call).op, base)
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
func operations(ops []*history.Op, ghosts *ghostSet) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(ops))
	rs := newReaders(ops)
	for _, op := range ops {
		c := &call{op: op, ghosts: ghosts, nClaims: ghosts.claimsUpTo(op.Return), readers: rs, reads: shows(op)}
		out = append(out, porcupine.Operation{
			ClientId: max(op.Client, 0),
			Input:    c,
			Call:     op.Call,
			Output:   op,
			Return:   op.Return,
			Metadata: op,
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
	s := fmt.Sprintf("{%s tok=%d #%d created=%s lease=%s exp=%s", strings.TrimPrefix(r.State, "STATE_"),
		r.Token, r.Attempt, logTime(r.CreatedAt, base), logTime(r.LeaseExpiresAt, base), logTime(r.ExpiresAt, base))
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

package checker

// Hidden tokens. The contract returns the token of a live claim to its
// holder only, so many outputs show an IN_PROGRESS record without it. What
// such a record still shows places it: its generation, created_at then
// attempt, orders it among the key's records as its token would. This file
// turns that into what the model and the invariants use: the token itself
// when another output shows it for the same generation (generations), or
// else bounds (hiddenBounds).

import (
	"math"
	"slices"
	"sort"

	"github.com/keystore-dev/keystore/cluster-test/history"
)

// hidesToken reports whether op's output shows its record without the
// token. The contract returns the token of a live claim to its holder only:
// an IN_PROGRESS answer to Claim and a Get of an IN_PROGRESS record carry
// token 0 (an admin's Get may show the real one). Tokens are log indexes,
// never 0, so a 0 there always means "hidden"; a 0 anywhere else (ACQUIRED,
// Heartbeat and Complete answers, COMPLETED records) is a wrong token.
func hidesToken(op *history.Op) bool {
	r := op.Record
	if r == nil || r.Token != 0 || !recInProgress(r) {
		return false
	}
	return op.Kind == history.Get || (op.Kind == history.Claim && outcome(op) == "IN_PROGRESS")
}

// generation is where a record stands in a key's life: created_at, then
// attempt.
type generation struct {
	created int64
	attempt uint32
}

func generationOf(r *history.Record) generation { return generation{r.CreatedAt, r.Attempt} }

func (g generation) less(h generation) bool {
	return g.created < h.created || (g.created == h.created && g.attempt < h.attempt)
}

// tokenRange is what is known of a hidden token: lo <= token <= hi.
type tokenRange struct{ lo, hi int64 }

// anyToken is a token of which nothing is known.
var anyToken = tokenRange{0, math.MaxInt64}

// hiddenBounds returns, per op, the range of the token its output hides
// (anyToken for the others): above every token shown with an earlier
// generation, below every token shown with a later one.
//
// NB: generations are ordered as tokens are. A record created later
// belongs to a later lineage (a fresh grant and its takeovers: lineages
// follow one another, and log time never goes back), whose tokens are all
// larger. One created at the same log time with a larger attempt is a
// later takeover of the same lineage: a takeover waits for a lease, which
// is positive, so a lineage that had one ended after its created_at, and
// two lineages created at the same log time are a single record released
// at once and then the other; only the latter may reach attempt 2.
func hiddenBounds(ops []*history.Op) []tokenRange {
	type gtok struct {
		g   generation
		tok int64
	}
	var gs []gtok
	for _, op := range ops {
		if shows(op) && !hidesToken(op) {
			gs = append(gs, gtok{generationOf(op.Record), int64(op.Record.Token)})
		}
	}
	slices.SortFunc(gs, func(a, b gtok) int {
		switch {
		case a.g.less(b.g):
			return -1
		case b.g.less(a.g):
			return 1
		}
		return 0
	})
	// preMax[i] is the largest token of gs[:i], sufMin[i] the smallest of
	// gs[i:].
	preMax := make([]int64, len(gs)+1)
	for i, x := range gs {
		preMax[i+1] = max(preMax[i], x.tok)
	}
	sufMin := make([]int64, len(gs)+1)
	sufMin[len(gs)] = math.MaxInt64
	for i := len(gs) - 1; i >= 0; i-- {
		sufMin[i] = min(sufMin[i+1], gs[i].tok)
	}
	out := make([]tokenRange, len(ops))
	for i, op := range ops {
		out[i] = anyToken
		if !shows(op) || !hidesToken(op) {
			continue
		}
		g := generationOf(op.Record)
		lo := sort.Search(len(gs), func(j int) bool { return !gs[j].g.less(g) }) // gs[:lo] are earlier
		hi := sort.Search(len(gs), func(j int) bool { return g.less(gs[j].g) })  // gs[hi:] are later
		if lo > 0 {
			out[i].lo = preMax[lo] + 1
		}
		if m := sufMin[hi]; m != math.MaxInt64 {
			out[i].hi = m - 1
		}
	}
	return out
}

// generations maps the generations of a key's records to their tokens, as
// the linearizable outputs that show a token tell, so that an output hiding
// its token can be read as showing it.
//
// NB: a generation is one record, hence one token, with one exception:
// two lineages created at the same log time, the first record released at
// once (at its created_at) and a fresh grant then. The first has attempt 1
// only (see hiddenBounds). So an attempt-1 generation is trusted only when
// no Release presents its token, nor a token that no output shows (whose
// generation is unknown): every release is some Release op's, and the
// history holds every call.
type generations struct {
	token     map[generation]uint64 // 0: two tokens claim it
	distrust  map[generation]bool
	unsureAll bool // a Release presents a token no output shows
}

func newGenerations(k *keyOps) *generations {
	g := &generations{token: map[generation]uint64{}, distrust: map[generation]bool{}}
	genOf := map[uint64]generation{}
	for _, op := range k.linear {
		if op.Record == nil || op.Result != history.OK || hidesToken(op) {
			continue
		}
		r := op.Record
		gen := generationOf(r)
		genOf[r.Token] = gen
		if t, ok := g.token[gen]; ok && t != r.Token {
			g.token[gen] = 0
		} else if !ok {
			g.token[gen] = r.Token
		}
	}
	for _, op := range k.all {
		if op.Kind != history.Release {
			continue
		}
		if gen, ok := genOf[op.Token]; ok {
			g.distrust[gen] = true
		} else {
			g.unsureAll = true
		}
	}
	return g
}

// oneRecord reports whether gen surely names a single record.
func (g *generations) oneRecord(gen generation) bool {
	switch gen.attempt {
	case 0, math.MaxUint32: // no record, or saturated: several
		return false
	case 1:
		return !g.unsureAll && !g.distrust[gen]
	}
	return true
}

// tokenOf returns the token of the record op shows, hidden or not, and
// whether it is known.
func (g *generations) tokenOf(op *history.Op) (uint64, bool) {
	r := op.Record
	if r == nil {
		return 0, false
	}
	if !hidesToken(op) {
		return r.Token, true
	}
	gen := generationOf(r)
	if !g.oneRecord(gen) {
		return 0, false
	}
	t := g.token[gen]
	return t, t != 0
}

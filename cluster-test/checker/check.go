package checker

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/keystore-dev/keystore/cluster-test/history"
)

// Verdict is porcupine's answer for one key.
type Verdict string

// Verdicts.
const (
	Ok      Verdict = "Ok"      // linearizable
	Illegal Verdict = "Illegal" // no linearization exists
	Unknown Verdict = "Unknown" // the search ran out of time
)

// Finding is one violation a direct check found.
type Finding struct {
	Key string
	// OpIDs are the op that shows the violation, then the ops it
	// contradicts.
	OpIDs  []int
	Detail string
}

func (f Finding) String() string {
	return fmt.Sprintf("key %q ops %v: %s", f.Key, f.OpIDs, f.Detail)
}

// Report is what Check found.
type Report struct {
	Ops           int // ops in the history
	Linearizable  int // ops given to the linearizability check
	Indeterminate int // writes whose outcome is unknown, checked as ghosts only
	StaleGets     int // Gets with CONSISTENCY_STALE, checked by StalePhantom only
	Dropped       int // reads that returned nothing to judge

	// Keys is porcupine's verdict per key.
	Keys map[string]Verdict
	// Widened lists the keys whose model gave up precision (too many
	// possible states); their Ok is weaker than it looks.
	Widened []string

	// DoubleAcquire: a Claim ACQUIRED a token while an older token's
	// lease was live and not ended by Complete or Release, or two clients
	// were ACQUIRED the same token.
	DoubleAcquire []Finding
	// LostCompletion: after an acknowledged Complete, a read shows the
	// key NOT_FOUND, IN_PROGRESS, an older record or a newer one, before
	// the completed record's expires_at.
	LostCompletion []Finding
	// ReplayMismatch: a COMPLETED record shows a response other than the
	// one the first acknowledged Complete of its token stored.
	ReplayMismatch []Finding
	// StaleRead: a linearizable Get called after an acknowledged Complete
	// shows NOT_FOUND or an older state before expires_at. Such a Get is
	// also a LostCompletion.
	StaleRead []Finding
	// StalePhantom: a stale Get shows a record no other read shows that
	// way (another created_at, attempt, fingerprint or expiry for its
	// token, or a token of another key).
	StalePhantom []Finding
}

// Violations returns the number of findings of all checks.
func (r Report) Violations() int {
	return len(r.DoubleAcquire) + len(r.LostCompletion) + len(r.ReplayMismatch) +
		len(r.StaleRead) + len(r.StalePhantom)
}

// OK reports whether every key is linearizable (Unknown counts as not OK:
// raise the timeout) and no check found anything.
func (r Report) OK() bool {
	for _, v := range r.Keys {
		if v != Ok {
			return false
		}
	}
	return r.Violations() == 0
}

// FailingKeys returns, sorted, the keys that are not Ok or that a finding
// names.
func (r Report) FailingKeys() []string {
	set := map[string]bool{}
	for k, v := range r.Keys {
		if v != Ok {
			set[k] = true
		}
	}
	for _, fs := range [][]Finding{r.DoubleAcquire, r.LostCompletion, r.ReplayMismatch, r.StaleRead, r.StalePhantom} {
		for _, f := range fs {
			set[f.Key] = true
		}
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// String summarises the report, one line per check and per failing key.
func (r Report) String() string {
	var b strings.Builder
	count := map[Verdict]int{}
	for _, v := range r.Keys {
		count[v]++
	}
	fmt.Fprintf(&b, "%d ops: %d linearizable, %d indeterminate, %d stale gets, %d dropped\n",
		r.Ops, r.Linearizable, r.Indeterminate, r.StaleGets, r.Dropped)
	fmt.Fprintf(&b, "keys: %d Ok, %d Illegal, %d Unknown, %d widened\n",
		count[Ok], count[Illegal], count[Unknown], len(r.Widened))
	for _, k := range r.FailingKeys() {
		if v := r.Keys[k]; v != Ok {
			fmt.Fprintf(&b, "  key %q: %s\n", k, v)
		}
	}
	for _, c := range []struct {
		name string
		fs   []Finding
	}{
		{"double acquire", r.DoubleAcquire},
		{"lost completion", r.LostCompletion},
		{"replay mismatch", r.ReplayMismatch},
		{"stale read", r.StaleRead},
		{"stale phantom", r.StalePhantom},
	} {
		fmt.Fprintf(&b, "%s: %d\n", c.name, len(c.fs))
		for _, f := range c.fs {
			fmt.Fprintf(&b, "  %s\n", f)
		}
	}
	return b.String()
}

// opClass says how the checker uses an op.
type opClass int

const (
	classLinear        opClass = iota // a porcupine operation
	classIndeterminate                // a write with unknown effect: a ghost only
	classStale                        // a stale Get
	classDropped                      // a read with no answer
)

func classify(op *history.Op) opClass {
	rec := op.Record != nil
	switch op.Kind {
	case history.Claim:
		switch {
		case op.Result == history.FingerprintMismatch:
			return classLinear
		case op.Result == history.OK && rec:
			switch outcome(op) {
			case "ACQUIRED", "IN_PROGRESS", "COMPLETED":
				return classLinear
			}
		}
	case history.Complete:
		if op.Result == history.ClaimLost || (op.Result == history.OK && rec) {
			return classLinear
		}
	case history.Release:
		switch op.Result {
		case history.OK, history.ClaimLost, history.AlreadyCompleted:
			return classLinear
		}
	case history.Heartbeat:
		if op.Result == history.ClaimLost || op.Result == history.AlreadyCompleted || (op.Result == history.OK && rec) {
			return classLinear
		}
	case history.Get:
		if op.Result != history.NotFound && (op.Result != history.OK || !rec) {
			return classDropped
		}
		if op.Stale {
			return classStale
		}
		return classLinear
	default:
		return classDropped
	}
	// NB: any other answer to a write, even one that surely did nothing
	// (INVALID_ARGUMENT), is treated as indeterminate: sound, less sharp.
	return classIndeterminate
}

// keyOps is one key's part of the history.
type keyOps struct {
	key    string
	all    []*history.Op
	linear []*history.Op
	ghosts *ghostSet
	gens   *generations
}

// indexed is a history split by key.
type indexed struct {
	ops   []*history.Op
	class map[*history.Op]opClass
	keys  []*keyOps // sorted by key
	base  int64     // smallest log time shown, for descriptions
}

func index(ops []history.Op) *indexed {
	h := &indexed{class: make(map[*history.Op]opClass, len(ops))}
	byKey := map[string]*keyOps{}
	for i := range ops {
		op := &ops[i]
		h.ops = append(h.ops, op)
		c := classify(op)
		h.class[op] = c
		k := byKey[op.Key]
		if k == nil {
			k = &keyOps{key: op.Key}
			byKey[op.Key] = k
			h.keys = append(h.keys, k)
		}
		k.all = append(k.all, op)
		if c == classLinear {
			k.linear = append(k.linear, op)
		}
		if r := op.Record; r != nil && r.CreatedAt > 0 && (h.base == 0 || r.CreatedAt < h.base) {
			h.base = r.CreatedAt
		}
	}
	sort.Slice(h.keys, func(i, j int) bool { return h.keys[i].key < h.keys[j].key })
	for _, k := range h.keys {
		k.ghosts = newGhostSet(k.all)
		k.gens = newGenerations(k)
	}
	return h
}

// Check judges a history: porcupine per key within timeout (for the whole
// history; zero or less means no limit), and the direct checks. ops is not
// modified.
func Check(ops []history.Op, timeout time.Duration) Report {
	h := index(append([]history.Op(nil), ops...))
	rep := Report{Ops: len(ops), Keys: make(map[string]Verdict, len(h.keys))}
	for _, c := range h.class {
		switch c {
		case classLinear:
			rep.Linearizable++
		case classIndeterminate:
			rep.Indeterminate++
		case classStale:
			rep.StaleGets++
		case classDropped:
			rep.Dropped++
		}
	}

	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	verdicts := make([]Verdict, len(h.keys))
	widen := make([]atomic.Bool, len(h.keys))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, k := range h.keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			verdicts[i] = checkKey(k, h.base, deadline, &widen[i])
		}()
	}
	wg.Wait()
	for i, k := range h.keys {
		rep.Keys[k.key] = verdicts[i]
		if widen[i].Load() {
			rep.Widened = append(rep.Widened, k.key)
		}
	}

	inv := newInvariants(h)
	rep.DoubleAcquire = inv.doubleAcquire()
	rep.LostCompletion, rep.StaleRead = inv.lostCompletions()
	rep.ReplayMismatch = inv.replayMismatches()
	rep.StalePhantom = inv.stalePhantoms()
	return rep
}

// checkKey runs porcupine over one key's linearizable ops.
func checkKey(k *keyOps, base int64, deadline time.Time, widen *atomic.Bool) Verdict {
	var timeout time.Duration
	if !deadline.IsZero() {
		if timeout = time.Until(deadline); timeout <= 0 {
			return Unknown
		}
	}
	model := newModel(base)
	step := model.StepContext
	model.StepContext = func(ctx context.Context, state, input, output any) (bool, any) {
		ok, next := step(ctx, state, input, output)
		if ok && widened(next.(stateSet)) {
			widen.Store(true)
		}
		return ok, next
	}
	// NB: the verbose check, unlike CheckOperationsTimeout, waits for its
	// search goroutine to stop before returning, even on timeout.
	res, _ := porcupine.CheckOperationsVerbose(model, operations(k), timeout)
	return Verdict(res)
}

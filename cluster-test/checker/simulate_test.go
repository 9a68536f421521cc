package checker

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/cluster-test/history"
)

// The simulator runs storage/apply.go's rules, restated here, under the
// conditions a fault run has: concurrent clients, commands applied twice
// (the driver re-proposing after a leader change), answers lost
// (INDETERMINATE), stale replicas. Every history it makes is legal, so the
// checker must pass all of them: this is the test of the model's soundness.

const (
	simLease     = int64(10 * time.Second)
	simRetention = int64(40 * time.Second)
)

// simRecord is storage's record.
type simRecord struct {
	history.Record
	retention int64
	requestID uint64
}

type simResult struct {
	result, outcome string
	rec             *history.Record // a copy
}

// sim is the replicated state machine plus the cluster's log time.
type sim struct {
	now     int64 // the log time of the last entry
	tick    int64 // log time between entries: 0 or tick (zero: 0-3s)
	index   uint64
	records map[string]*simRecord
	past    []snapshot // for stale reads
}

type snapshot struct {
	wall int64
	now  int64
	key  string
	rec  *simRecord // nil: no record
}

func (s *sim) live(key string) *simRecord {
	r := s.records[key]
	if r == nil || s.now >= r.ExpiresAt {
		return nil
	}
	return r
}

func copyRec(r *simRecord) *history.Record {
	c := r.Record
	c.Fingerprint = append([]byte(nil), r.Fingerprint...)
	c.ResponseBody = append([]byte(nil), r.ResponseBody...)
	return &c
}

// apply appends one entry for op at wall time wall and applies it.
func (s *sim) apply(rng *rand.Rand, wall int64, op *history.Op, requestID uint64) simResult {
	s.index += uint64(1 + rng.IntN(3)) // other keys' entries in between
	if s.tick == 0 {
		s.now += int64(rng.IntN(3000)) * int64(time.Millisecond)
	} else {
		s.now += int64(rng.IntN(2)) * s.tick // many entries share a log time
	}
	res := s.transition(op, requestID)
	s.past = append(s.past, snapshot{wall: wall, now: s.now, key: op.Key, rec: s.cloneLive(op.Key)})
	return res
}

func (s *sim) cloneLive(key string) *simRecord {
	r := s.live(key)
	if r == nil {
		return nil
	}
	c := *r
	c.Record = *copyRec(r)
	return &c
}

func (s *sim) transition(op *history.Op, requestID uint64) simResult {
	cur := s.live(op.Key)
	switch op.Kind {
	case history.Claim:
		lease, ret := int64(op.Lease), int64(op.Retention)
		if lease == 0 {
			lease = simLease
		}
		if ret == 0 {
			ret = simRetention
		}
		if cur == nil {
			r := &simRecord{retention: ret, requestID: requestID}
			r.State, r.Fingerprint, r.Token, r.Attempt = "IN_PROGRESS", op.Fingerprint, s.index, 1
			r.CreatedAt, r.ExpiresAt = s.now, s.now+ret
			r.LeaseExpiresAt = min(s.now+lease, r.ExpiresAt)
			s.records[op.Key] = r
			return simResult{history.OK, "ACQUIRED", copyRec(r)}
		}
		if fingerprintsDiffer(string(cur.Fingerprint), string(op.Fingerprint)) {
			return simResult{result: history.FingerprintMismatch}
		}
		if cur.State == "COMPLETED" {
			return simResult{history.OK, "COMPLETED", copyRec(cur)}
		}
		if cur.requestID == requestID {
			return simResult{history.OK, "ACQUIRED", copyRec(cur)}
		}
		if s.now < cur.LeaseExpiresAt {
			return simResult{history.OK, "IN_PROGRESS", copyRec(cur)}
		}
		cur.Token, cur.Attempt, cur.requestID, cur.retention = s.index, cur.Attempt+1, requestID, ret
		if len(cur.Fingerprint) == 0 {
			cur.Fingerprint = op.Fingerprint
		}
		cur.ExpiresAt = s.now + ret
		cur.LeaseExpiresAt = min(s.now+lease, cur.ExpiresAt)
		return simResult{history.OK, "ACQUIRED", copyRec(cur)}
	case history.Complete:
		if cur == nil || cur.Token != op.Token {
			return simResult{result: history.ClaimLost}
		}
		if cur.State == "COMPLETED" {
			return simResult{history.OK, "", copyRec(cur)}
		}
		ret := int64(op.Retention)
		if ret == 0 {
			ret = cur.retention
		}
		cur.State, cur.CompletedAt, cur.ExpiresAt = "COMPLETED", s.now, s.now+ret
		cur.LeaseExpiresAt = min(cur.LeaseExpiresAt, s.now)
		cur.ResponseCode, cur.ResponseBody = op.ResponseCode, op.ResponseBody
		return simResult{history.OK, "", copyRec(cur)}
	case history.Release:
		switch {
		case cur == nil:
			return simResult{result: history.OK}
		case cur.State == "COMPLETED":
			return simResult{result: history.AlreadyCompleted}
		case cur.Token != op.Token:
			return simResult{result: history.ClaimLost}
		}
		delete(s.records, op.Key)
		return simResult{result: history.OK}
	case history.Heartbeat:
		switch {
		case cur == nil:
			return simResult{result: history.ClaimLost}
		case cur.State == "COMPLETED":
			return simResult{result: history.AlreadyCompleted}
		case cur.Token != op.Token:
			return simResult{result: history.ClaimLost}
		}
		lease := int64(op.Lease)
		if lease == 0 {
			lease = simLease
		}
		cur.LeaseExpiresAt = min(s.now+lease, cur.ExpiresAt)
		return simResult{history.OK, "", copyRec(cur)}
	}
	panic("unreachable")
}

// event is something that happens at a wall time.
type event struct {
	wall int64
	seq  int
	fn   func()
}

type events []event

func (e events) Len() int { return len(e) }
func (e events) Less(i, j int) bool {
	return e[i].wall < e[j].wall || (e[i].wall == e[j].wall && e[i].seq < e[j].seq)
}
func (e events) Swap(i, j int) { e[i], e[j] = e[j], e[i] }
func (e *events) Push(x any)   { *e = append(*e, x.(event)) }
func (e *events) Pop() any {
	old := *e
	x := old[len(old)-1]
	*e = old[:len(old)-1]
	return x
}

// simulate makes a legal history: clients clients, keys keys, opsPerClient
// calls each. chaos makes writes apply up to three times and lose more
// answers.
func simulate(seed uint64, clients, keys, opsPerClient int, chaos bool) []history.Op {
	return simulateTicks(seed, clients, keys, opsPerClient, chaos, 0)
}

// simulateTicks is simulate with log time advancing by 0 or tick per entry
// (tick zero: 0-3s, as simulate).
func simulateTicks(seed uint64, clients, keys, opsPerClient int, chaos bool, tick time.Duration) []history.Op {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	s := &sim{now: t0, tick: int64(tick), index: 1, records: map[string]*simRecord{}}
	var q events
	seq := 0
	at := func(wall int64, fn func()) {
		seq++
		heap.Push(&q, event{wall, seq, fn})
	}
	var ops []*history.Op
	var reqID uint64

	type clientState struct {
		tokens map[string]uint64 // the token last ACQUIRED per key
		left   int
	}
	var next func(c int, cs *clientState, wall int64)
	next = func(c int, cs *clientState, wall int64) {
		if cs.left == 0 {
			return
		}
		cs.left--
		key := fmt.Sprintf("k%d", rng.IntN(keys))
		op := &history.Op{Client: c, Key: key, Call: wall}
		tok, holds := cs.tokens[key]
		roll := rng.IntN(100)
		switch {
		case holds && roll < 25:
			op.Kind, op.Token, op.Lease = history.Heartbeat, tok, time.Duration(simLease)
		case holds && roll < 60:
			op.Kind, op.Token = history.Complete, tok
			op.ResponseCode, op.ResponseBody = 200, fmt.Appendf(nil, "r%d", rng.IntN(3))
			if rng.IntN(3) == 0 {
				op.Retention = time.Duration(simRetention / 2)
			}
		case holds && roll < 70:
			op.Kind, op.Token = history.Release, tok
		case (holds && roll < 80) || (!holds && roll < 30):
			op.Kind, op.Stale = history.Get, rng.IntN(3) == 0
		default:
			op.Kind = history.Claim
			op.Lease, op.Retention = time.Duration(simLease), time.Duration(simRetention)
			if rng.IntN(5) == 0 {
				op.Lease, op.Retention = 0, 0 // server defaults
			}
			op.Fingerprint = [][]byte{nil, nil, []byte("a"), []byte("b")}[rng.IntN(4)]
		}
		ops = append(ops, op)
		done := func(ret int64) {
			op.Return = ret
			at(ret+int64(rng.IntN(5)), func() { next(c, cs, ret+int64(rng.IntN(5))) })
		}

		if op.Kind == history.Get {
			read := wall + int64(1+rng.IntN(20))
			at(read, func() {
				switch {
				case rng.IntN(10) == 0:
					op.Result = history.Indeterminate
				case op.Stale:
					// A replica that applied a prefix of the log.
					var snaps []snapshot
					for _, p := range s.past {
						if p.key == key {
							snaps = append(snaps, p)
						}
					}
					if len(snaps) == 0 {
						op.Result = history.NotFound
						break
					}
					p := snaps[len(snaps)-1-rng.IntN(min(len(snaps), 4))]
					if p.rec == nil || p.now >= p.rec.ExpiresAt {
						op.Result = history.NotFound
					} else {
						op.Result, op.Record = history.OK, copyRec(p.rec)
					}
				default:
					if r := s.live(key); r != nil {
						op.Result, op.Record = history.OK, copyRec(r)
					} else {
						op.Result = history.NotFound
					}
				}
				done(read + int64(rng.IntN(20)))
			})
			return
		}

		// A write: applied once, twice (re-proposed) or, if its answer is
		// lost, maybe never.
		reqID++
		id := reqID
		indeterminate := rng.IntN(6) == 0
		apps, spread := 1, 40
		if rng.IntN(4) == 0 {
			apps = 2
		}
		if chaos {
			indeterminate = rng.IntN(3) == 0
			apps, spread = 1+rng.IntN(3), 150
		}
		if indeterminate {
			apps = rng.IntN(apps + 1)
		}
		times := make([]int64, apps)
		for i := range times {
			times[i] = wall + int64(1+rng.IntN(spread))
		}
		answered := rng.IntN(max(apps, 1)) // which application's answer the client hears
		if indeterminate {
			done(wall + int64(1+rng.IntN(60)))
			op.Result = history.Indeterminate
		}
		for i, t := range times {
			at(t, func() {
				res := s.apply(rng, t, op, id)
				if indeterminate || i != answered {
					return
				}
				op.Result, op.Outcome, op.Record = res.result, res.outcome, res.rec
				switch {
				case res.outcome == "ACQUIRED":
					cs.tokens[key] = res.rec.Token
				case op.Kind != history.Claim && op.Kind != history.Heartbeat && rng.IntN(5) != 0:
					delete(cs.tokens, key) // sometimes keep it, to present it fenced
				}
				done(t + int64(rng.IntN(10)))
			})
		}
	}
	for c := range clients {
		cs := &clientState{tokens: map[string]uint64{}, left: opsPerClient}
		at(int64(rng.IntN(10)), func() { next(c, cs, int64(rng.IntN(10))) })
	}
	for q.Len() > 0 {
		e := heap.Pop(&q).(event)
		e.fn()
	}
	out := make([]history.Op, len(ops))
	for i, op := range ops {
		op.ID = i
		out[i] = *op
	}
	return out
}

func TestSimulatedHistoriesPass(t *testing.T) {
	seeds := 150
	if testing.Short() {
		seeds = 30
	}
	for seed := range uint64(seeds) {
		clients, keys, calls := 4, 2, 14
		if seed%3 == 0 {
			clients, keys, calls = 6, 1, 12 // one hot key
		}
		ops := simulate(seed, clients, keys, calls, seed%2 == 1)
		rep := Check(ops, 10*time.Second)
		if !rep.OK() || len(rep.Widened) > 0 {
			path := filepath.Join(t.TempDir(), fmt.Sprintf("sim-%d.json", seed))
			if err := history.Save(path, ops); err != nil {
				t.Fatal(err)
			}
			t.Fatalf("seed %d: legal history judged illegal (saved to %s):\n%s", seed, path, rep)
		}
	}
}

// hideLiveTokens returns ops as the contract's Security section has the
// server answer them: an IN_PROGRESS Claim answer and a Get of an
// IN_PROGRESS record (stale or not) show token 0, the token of a live claim
// being its holder's alone. ACQUIRED, Heartbeat and Complete answers and
// COMPLETED records keep theirs. keep, if not nil, picks the Gets that
// still show the token (an admin credential's).
func hideLiveTokens(ops []history.Op, keep func(*history.Op) bool) []history.Op {
	out := append([]history.Op(nil), ops...)
	for i := range out {
		op := &out[i]
		if op.Record == nil || !recInProgress(op.Record) {
			continue
		}
		switch {
		case op.Kind == history.Claim && outcome(op) == "IN_PROGRESS":
		case op.Kind == history.Get && (keep == nil || !keep(op)):
		default:
			continue
		}
		r := *op.Record
		r.Token = 0
		op.Record = &r
	}
	return out
}

func TestSimulatedHistoriesPassWithHiddenTokens(t *testing.T) {
	seeds := 150
	if testing.Short() {
		seeds = 30
	}
	for seed := range uint64(seeds) {
		clients, keys, calls := 4, 2, 14
		if seed%3 == 0 {
			clients, keys, calls = 6, 1, 12 // one hot key
		}
		var tick time.Duration
		if seed%5 == 4 { // coarse log time: records created and released at once
			tick = time.Second
		}
		ops := simulateTicks(seed, clients, keys, calls, seed%2 == 1, tick)
		var keep func(*history.Op) bool
		if seed%4 == 2 { // some Gets by an admin, which see the token
			keep = func(op *history.Op) bool { return op.ID%3 == 0 }
		}
		ops = hideLiveTokens(ops, keep)
		rep := Check(ops, 10*time.Second)
		if !rep.OK() || len(rep.Widened) > 0 {
			path := filepath.Join(t.TempDir(), fmt.Sprintf("sim-hidden-%d.json", seed))
			if err := history.Save(path, ops); err != nil {
				t.Fatal(err)
			}
			t.Fatalf("seed %d: legal history with hidden tokens judged illegal (saved to %s):\n%s", seed, path, rep)
		}
	}
}

// TestSimulatedSameTimeLineages checks histories where a record is released
// at its own created_at and another granted afresh at that log time: two
// tokens with one generation (created_at, attempt 1), which a hidden token
// must not be taken for the other's.
func TestSimulatedSameTimeLineages(t *testing.T) {
	for _, run := range []struct {
		seed  uint64
		chaos bool
	}{{6502, false}, {6708, true}} {
		seed := run.seed
		ops := simulateTicks(seed, 4, 2, 14, run.chaos, time.Second)
		type gen struct {
			key     string
			created int64
		}
		toks := map[gen]map[uint64]bool{}
		shared := false
		for _, op := range ops {
			if r := op.Record; r != nil && r.Attempt == 1 {
				g := gen{op.Key, r.CreatedAt}
				if toks[g] == nil {
					toks[g] = map[uint64]bool{}
				}
				toks[g][r.Token] = true
				shared = shared || len(toks[g]) > 1
			}
		}
		if !shared {
			t.Fatalf("seed %d: no two tokens share a generation; pick another seed", seed)
		}
		for _, hide := range []bool{false, true} {
			in := ops
			if hide {
				in = hideLiveTokens(ops, nil)
			}
			if rep := Check(in, 10*time.Second); !rep.OK() || len(rep.Widened) > 0 {
				t.Errorf("seed %d, tokens hidden %v: legal history judged illegal:\n%s", seed, hide, rep)
			}
		}
	}
}

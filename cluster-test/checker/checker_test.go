package checker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/cluster-test/history"
)

// Log times in the tests: t0 plus seconds. Wall-clock times (Call, Return)
// are small numbers on another clock, as in a real run.
const (
	t0        = int64(1_700_000_000) * int64(time.Second)
	lease     = 10 * time.Second
	retention = time.Hour
)

func at(s float64) int64 { return t0 + int64(s*float64(time.Second)) }

// held is the IN_PROGRESS record of token tok, attempt a, created at c and
// granted (claimed or taken over) at g.
func held(tok uint64, a uint32, c, g float64) *history.Record {
	return &history.Record{State: "IN_PROGRESS", Token: tok, Attempt: a, CreatedAt: at(c),
		LeaseExpiresAt: at(g) + int64(lease), ExpiresAt: at(g) + int64(retention)}
}

// extended is r after a Heartbeat at t.
func extended(r *history.Record, t float64) *history.Record {
	c := *r
	c.LeaseExpiresAt = min(at(t)+int64(lease), c.ExpiresAt)
	return &c
}

// done is r after a Complete at t with response 200:body.
func done(r *history.Record, t float64, body string) *history.Record {
	c := *r
	c.State, c.CompletedAt = "COMPLETED", at(t)
	c.LeaseExpiresAt = min(c.LeaseExpiresAt, at(t))
	c.ExpiresAt = at(t) + int64(retention)
	c.ResponseCode, c.ResponseBody = 200, []byte(body)
	return &c
}

func with(r *history.Record, fn func(*history.Record)) *history.Record {
	c := *r
	fn(&c)
	return &c
}

func claimOp(client int, call, ret int64, result, outcome string, r *history.Record) history.Op {
	return history.Op{Client: client, Kind: history.Claim, Key: "k", Lease: lease, Retention: retention,
		Call: call, Return: ret, Result: result, Outcome: outcome, Record: r}
}

func acq(client int, call, ret int64, r *history.Record) history.Op {
	return claimOp(client, call, ret, history.OK, "ACQUIRED", r)
}

func seen(client int, call, ret int64, r *history.Record) history.Op {
	return claimOp(client, call, ret, history.OK, "IN_PROGRESS", r)
}

func replayed(client int, call, ret int64, r *history.Record) history.Op {
	return claimOp(client, call, ret, history.OK, "COMPLETED", r)
}

func complete(client int, call, ret int64, tok uint64, body, result string, r *history.Record) history.Op {
	return history.Op{Client: client, Kind: history.Complete, Key: "k", Token: tok, Retention: retention,
		ResponseCode: 200, ResponseBody: []byte(body), Call: call, Return: ret, Result: result, Record: r}
}

func release(client int, call, ret int64, tok uint64, result string) history.Op {
	return history.Op{Client: client, Kind: history.Release, Key: "k", Token: tok, Call: call, Return: ret, Result: result}
}

func heartbeat(client int, call, ret int64, tok uint64, result string, r *history.Record) history.Op {
	return history.Op{Client: client, Kind: history.Heartbeat, Key: "k", Token: tok, Lease: lease,
		Call: call, Return: ret, Result: result, Record: r}
}

func get(client int, call, ret int64, r *history.Record) history.Op {
	res := history.OK
	if r == nil {
		res = history.NotFound
	}
	return history.Op{Client: client, Kind: history.Get, Key: "k", Call: call, Return: ret, Result: res, Record: r}
}

func staleGet(client int, call, ret int64, r *history.Record) history.Op {
	op := get(client, call, ret, r)
	op.Stale = true
	return op
}

func fp(op history.Op, f string) history.Op {
	op.Fingerprint = []byte(f)
	if op.Record != nil && op.Outcome == "ACQUIRED" && op.Record.Attempt == 1 {
		op.Record = with(op.Record, func(r *history.Record) { r.Fingerprint = []byte(f) })
	}
	return op
}

// counts is what a test expects of a Report.
type counts struct {
	verdict                               Verdict
	double, lost, replay, stale, phantoms int
}

func countsOf(r Report) counts {
	return counts{r.Keys["k"], len(r.DoubleAcquire), len(r.LostCompletion), len(r.ReplayMismatch),
		len(r.StaleRead), len(r.StalePhantom)}
}

var (
	r5      = held(5, 1, 1, 1)    // token 5 granted at 1s: lease to 11s
	r5d     = done(r5, 8, "paid") // completed at 8s
	r9take  = held(9, 2, 1, 12)   // token 9 took token 5's record over at 12s
	r9fresh = held(9, 1, 20, 20)  // token 9 granted afresh at 20s
	r5hb    = extended(r5, 9)     // heartbeat at 9s: lease to 19s
	r5ghost = extended(r5, 6)     // an earlier application of that heartbeat
	legal   = counts{verdict: Ok}
)

// checkCase is a history and what Check must find in it.
type checkCase struct {
	name string
	ops  []history.Op
	want counts
}

var checkCases = []checkCase{
	// Legal histories.
	{"sequential lifecycle", []history.Op{
		acq(0, 10, 20, r5),
		heartbeat(0, 30, 40, 5, history.OK, extended(r5, 5)),
		complete(0, 50, 60, 5, "paid", history.OK, done(extended(r5, 5), 8, "paid")),
		replayed(1, 70, 80, done(extended(r5, 5), 8, "paid")),
		get(1, 90, 100, done(extended(r5, 5), 8, "paid")),
		complete(0, 110, 120, 5, "again", history.OK, done(extended(r5, 5), 8, "paid")),
		release(0, 130, 140, 5, history.AlreadyCompleted),
		heartbeat(0, 150, 160, 5, history.AlreadyCompleted, nil),
	}, legal},
	{"concurrent claims, one acquires", []history.Op{
		acq(0, 10, 50, r5),
		seen(1, 20, 30, r5), // returned first, linearized after
		seen(2, 25, 60, r5),
	}, legal},
	{"takeover after the lease lapsed", []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, r9take),
		complete(0, 50, 60, 5, "late", history.ClaimLost, nil),
		heartbeat(0, 70, 80, 5, history.ClaimLost, nil),
		get(2, 90, 100, r9take),
	}, legal},
	{"indeterminate claim took effect", []history.Op{
		claimOp(0, 10, 20, history.Indeterminate, "", nil),
		seen(1, 30, 40, r5), // token 5 was granted to client 0's lost call
		acq(1, 50, 60, r9take),
	}, legal},
	{"indeterminate claim took no effect", []history.Op{
		claimOp(0, 10, 20, history.Indeterminate, "", nil),
		acq(1, 30, 40, r9fresh),
		get(2, 50, 60, r9fresh),
	}, legal},
	{"indeterminate complete took effect", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.Indeterminate, nil),
		replayed(1, 50, 60, r5d),
	}, legal},
	{"replays", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.OK, r5d),
		replayed(1, 50, 60, r5d),
		replayed(2, 55, 65, r5d),
		get(3, 70, 80, r5d),
		staleGet(3, 90, 100, r5), // a lagging replica may show the past
	}, legal},
	{"release then re-acquire", []history.Op{
		acq(0, 10, 20, r5),
		release(0, 30, 40, 5, history.OK),
		get(1, 50, 60, nil),
		acq(1, 70, 80, r9fresh),
		release(0, 90, 100, 5, history.ClaimLost),
	}, legal},
	{"heartbeat keeps the claim", []history.Op{
		acq(0, 10, 20, r5),
		heartbeat(0, 30, 40, 5, history.OK, r5hb),
		seen(1, 50, 60, r5hb),
		complete(0, 70, 80, 5, "paid", history.OK, done(r5hb, 15, "paid")),
	}, legal},
	{"fingerprints", []history.Op{
		fp(acq(0, 10, 20, r5), "a"),
		fp(claimOp(1, 30, 40, history.FingerprintMismatch, "", nil), "b"),
		fp(seen(2, 50, 60, with(r5, func(r *history.Record) { r.Fingerprint = []byte("a") })), ""),
	}, legal},
	{"expired completion makes way", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.OK, r5d),
		get(1, 50, 60, nil), // at or past 8s + 1h
		acq(1, 70, 80, held(9, 1, 3700, 3700)),
	}, legal},
	// Duplicate applications: the driver re-proposes after a leader change.
	{"duplicate release answers CLAIM_LOST", []history.Op{
		acq(0, 10, 20, r5),
		release(0, 30, 100, 5, history.ClaimLost), // applied, then again after client 1's claim
		acq(1, 40, 50, held(9, 1, 2, 2)),
	}, legal},
	{"duplicate heartbeat shows through", []history.Op{
		acq(0, 10, 20, r5),
		heartbeat(0, 30, 100, 5, history.OK, r5hb), // first applied at 6s, answered from 9s
		seen(1, 40, 50, r5ghost),
	}, legal},
	{"retried claim answers with its first grant", []history.Op{
		acq(0, 10, 100, r5),
		seen(1, 20, 30, r5), // client 1 saw the grant before client 0 heard of it
	}, legal},

	// Violations.
	{"double acquire", []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, held(9, 2, 1, 5)), // took over at 5s, lease ran to 11s
	}, counts{verdict: Illegal, double: 1}},
	{"double acquire of a live record afresh", []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, held(9, 1, 5, 5)),
	}, counts{verdict: Illegal, double: 1}},
	{"one token to two clients", []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, r5),
	}, counts{verdict: Illegal, double: 1}},
	{"takeover before a heartbeat's lease end", []history.Op{
		acq(0, 10, 20, r5),
		heartbeat(0, 30, 40, 5, history.OK, r5hb),
		acq(1, 50, 60, held(9, 2, 1, 15)), // lease ran to 19s
	}, counts{verdict: Illegal, double: 1}},
	{"read after completion shows IN_PROGRESS", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.OK, r5d),
		get(1, 50, 60, r5),
	}, counts{verdict: Illegal, lost: 1, stale: 1}},
	{"read after completion shows NOT_FOUND, then it reappears", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.OK, r5d),
		get(1, 50, 60, nil),
		replayed(2, 70, 80, r5d),
	}, counts{verdict: Illegal, lost: 1, stale: 1}},
	{"read after completion shows an older token", []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, r9take),
		complete(1, 50, 60, 9, "paid", history.OK, done(r9take, 14, "paid")),
		get(2, 70, 80, r5),
	}, counts{verdict: Illegal, lost: 1, stale: 1}},
	{"claim acquires over an acknowledged completion", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.OK, r5d),
		acq(1, 50, 60, r9fresh),
	}, counts{verdict: Illegal, lost: 1}},
	{"replay with another body", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.OK, r5d),
		replayed(1, 50, 60, done(r5, 8, "refunded")),
	}, counts{verdict: Illegal, replay: 1}},
	{"stale replay with another body", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.OK, r5d),
		staleGet(1, 50, 60, done(r5, 8, "refunded")),
	}, counts{verdict: Ok, replay: 1}},
	{"stale read of a record that never was", []history.Op{
		acq(0, 10, 20, r5),
		staleGet(1, 30, 40, held(5, 3, 1, 1)),
	}, counts{verdict: Ok, phantoms: 1}},
	{"log time goes backwards", []history.Op{
		acq(0, 10, 20, held(5, 1, 5, 5)),
		complete(0, 30, 40, 5, "paid", history.OK, done(held(5, 1, 5, 5), 3, "paid")),
	}, counts{verdict: Illegal}},
	{"log time goes backwards across records", []history.Op{
		acq(0, 10, 20, held(5, 1, 5, 5)),
		release(0, 30, 40, 5, history.OK),
		acq(1, 50, 60, held(9, 1, 4, 4)),
	}, counts{verdict: Illegal}},
	{"fenced token completes", []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, r9take),
		complete(0, 50, 60, 5, "paid", history.OK, done(r5, 13, "paid")),
	}, counts{verdict: Illegal}},
	{"token not larger than one seen", []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, held(4, 2, 1, 12)),
	}, counts{verdict: Illegal}},
	{"completed record answers after it expired", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.OK, r5d),
		get(1, 50, 60, nil), // expired
		release(0, 70, 80, 5, history.AlreadyCompleted),
	}, counts{verdict: Illegal}},
	{"holder's complete answered CLAIM_LOST", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.ClaimLost, nil),
		get(1, 50, 60, r5),
	}, counts{verdict: Illegal}},
	{"fenced token releases", []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, r9take),
		release(0, 50, 60, 5, history.OK), // legal only if token 9 expired
		acq(2, 70, 80, held(12, 1, 15, 15)),
	}, counts{verdict: Illegal, double: 1}},
	{"read shows a state the record is not in", []history.Op{
		acq(0, 10, 20, r5),
		get(1, 30, 40, with(r5, func(r *history.Record) { r.State = "COMPLETED" })),
	}, counts{verdict: Illegal, replay: 1}}, // and a response no Complete sent
	{"fingerprint mismatch with an equal fingerprint", []history.Op{
		fp(acq(0, 10, 20, r5), "a"),
		fp(claimOp(1, 30, 40, history.FingerprintMismatch, "", nil), "a"),
	}, counts{verdict: Illegal}},
	{"indeterminate complete cannot make way early", []history.Op{
		acq(0, 10, 20, r5),
		complete(0, 30, 40, 5, "paid", history.Indeterminate, nil),
		get(1, 50, 60, nil),
		acq(1, 70, 80, r9fresh), // at 20s: neither record can be gone
	}, counts{verdict: Illegal}},
	{"grant with a longer lease than asked", []history.Op{
		acq(0, 10, 20, with(r5, func(r *history.Record) { r.LeaseExpiresAt += int64(lease) })),
	}, counts{verdict: Illegal}},
	{"heartbeat by a fenced token", []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, r9take),
		heartbeat(0, 50, 60, 5, history.OK, extended(r5, 13)),
	}, counts{verdict: Illegal}},
}

func TestCheck(t *testing.T) {
	for _, tt := range checkCases {
		t.Run(tt.name, func(t *testing.T) {
			checkCounts(t, tt.ops, tt.want)
		})
	}
}

// checkCounts numbers ops, checks them and compares the report with want.
func checkCounts(t *testing.T, ops []history.Op, want counts) {
	t.Helper()
	ops = append([]history.Op(nil), ops...)
	for i := range ops {
		ops[i].ID = i
	}
	rep := Check(ops, 5*time.Second)
	if got := countsOf(rep); got != want {
		t.Errorf("got %+v; want %+v\n%s", got, want, rep)
	}
	if rep.OK() != (want == legal) {
		t.Errorf("OK() = %v; want %v", rep.OK(), want == legal)
	}
}

func TestCheckCountsOps(t *testing.T) {
	ops := []history.Op{
		acq(0, 10, 20, r5),
		claimOp(1, 30, 40, "UNAVAILABLE", "", nil),
		staleGet(2, 50, 60, r5),
		{Client: 3, Kind: history.Get, Key: "k", Call: 70, Return: 80, Result: history.Indeterminate},
		{Client: 3, Kind: history.Get, Key: "other", Call: 70, Return: 80, Result: history.NotFound},
	}
	for i := range ops {
		ops[i].ID = i
	}
	rep := Check(ops, 0)
	got := [5]int{rep.Ops, rep.Linearizable, rep.Indeterminate, rep.StaleGets, rep.Dropped}
	if want := [5]int{5, 2, 1, 1, 1}; got != want {
		t.Errorf("ops, linearizable, indeterminate, stale, dropped: got %v; want %v", got, want)
	}
	if len(rep.Keys) != 2 || rep.Keys["k"] != Ok || rep.Keys["other"] != Ok {
		t.Errorf("keys: got %v; want k and other Ok", rep.Keys)
	}
}

func TestCheckKeysAreIndependent(t *testing.T) {
	ops := []history.Op{
		acq(0, 10, 20, r5),
		acq(1, 30, 40, held(9, 2, 1, 5)),
	}
	ops[1].Key = "other" // token 9 on another key does not fence token 5
	ops[1].Record = held(9, 1, 5, 5)
	for i := range ops {
		ops[i].ID = i
	}
	rep := Check(ops, time.Second)
	if !rep.OK() {
		t.Errorf("got violations; want none\n%s", rep)
	}
}

func TestCheckTimeoutIsUnknown(t *testing.T) {
	ops := []history.Op{acq(0, 10, 20, r5)}
	rep := Check(ops, time.Nanosecond) // spent before the search starts
	if rep.Keys["k"] != Unknown || rep.OK() {
		t.Errorf("got %s, OK() = %v; want Unknown, false", rep.Keys["k"], rep.OK())
	}
}

func TestSaveVisualization(t *testing.T) {
	ops := []history.Op{
		acq(0, 10, 20, r5),
		claimOp(2, 15, 25, history.Indeterminate, "", nil),
		acq(1, 30, 40, r9take),
		complete(0, 50, 60, 5, "paid", history.OK, done(r5, 13, "paid")),
	}
	for i := range ops {
		ops[i].ID = i
	}
	rep := Check(ops, time.Second)
	keys := rep.FailingKeys()
	if len(keys) != 1 || keys[0] != "k" {
		t.Fatalf("failing keys: got %v; want [k]", keys)
	}
	path := filepath.Join(t.TempDir(), "viz.html")
	if err := SaveVisualization(path, ops, keys, time.Second); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<html", "complete(tok=5", "indeterminate write"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("visualization lacks %q", want)
		}
	}
}

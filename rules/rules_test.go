package rules

import (
	"github.com/keystore-dev/keystore/internal/commandtest"
	"math"
	"testing"
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// with returns a copy of r changed by fn.
func with(r *statev1.Record, fn func(*statev1.Record)) *statev1.Record {
	c := proto.Clone(r).(*statev1.Record)
	fn(c)
	return c
}

// held is an IN_PROGRESS record claimed at commandtest.T0 by entry 5.
var held = &statev1.Record{
	State:          statev1.State_STATE_IN_PROGRESS,
	Fingerprint:    []byte("fp"),
	Token:          5,
	Attempt:        1,
	Owner:          "alice",
	CreatedAt:      commandtest.T0,
	LeaseExpiresAt: commandtest.T0 + commandtest.Lease,
	ExpiresAt:      commandtest.T0 + commandtest.Retention,
	Retention:      commandtest.Retention,
	ClaimRequestId: 100,
}

var storedResponse = &statev1.Response{Code: 201, Metadata: map[string]string{"content-type": "text/plain"}, Body: []byte("first")}

// done is held, completed 10 s after commandtest.T0.
var done = with(held, func(r *statev1.Record) {
	r.State = statev1.State_STATE_COMPLETED
	r.CompletedAt = commandtest.T0 + int64(10*time.Second)
	r.LeaseExpiresAt = commandtest.T0 + int64(10*time.Second)
	r.ExpiresAt = commandtest.T0 + int64(10*time.Second) + commandtest.Retention
	r.Response = storedResponse
})

func failed(e statev1.Error) *statev1.Result { return &statev1.Result{Error: e} }

type transitionCase struct {
	name      string
	cur       *statev1.Record
	cmd       *statev1.Command
	index     uint64
	requestID uint64
	now       int64
	wantWrite bool
	wantNext  *statev1.Record // checked when wantWrite
	wantRes   *statev1.Result
}

func runTransitionCases(t *testing.T, tests []transitionCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before *statev1.Record
			if tt.cur != nil {
				before = proto.Clone(tt.cur).(*statev1.Record)
			}
			next, write, res := Transition(tt.cur, tt.cmd, tt.index, tt.requestID, tt.now)
			if write != tt.wantWrite {
				t.Errorf("write = %v; want %v", write, tt.wantWrite)
			}
			if tt.wantWrite && !proto.Equal(next, tt.wantNext) {
				t.Errorf("next = %v; want %v", next, tt.wantNext)
			}
			if !tt.wantWrite && next != nil {
				t.Errorf("next = %v with write=false; want nil", next)
			}
			if !proto.Equal(res, tt.wantRes) {
				t.Errorf("result = %v; want %v", res, tt.wantRes)
			}
			if tt.cur != nil && !proto.Equal(tt.cur, before) {
				t.Errorf("transition modified cur: got %v; want %v", tt.cur, before)
			}
		})
	}
}

func TestTransitionClaim(t *testing.T) {
	const idx, req = 9, 200
	now := commandtest.T0 + int64(time.Minute)
	fresh := &statev1.Record{
		State:          statev1.State_STATE_IN_PROGRESS,
		Fingerprint:    []byte("fp"),
		Token:          idx,
		Attempt:        1,
		Owner:          "bob",
		CreatedAt:      now,
		LeaseExpiresAt: now + commandtest.Lease,
		ExpiresAt:      now + commandtest.Retention,
		Retention:      commandtest.Retention,
		ClaimRequestId: req,
	}
	acquired := func(r *statev1.Record) *statev1.Result {
		return &statev1.Result{Outcome: statev1.Outcome_OUTCOME_ACQUIRED, Record: r}
	}
	lapsed := held.LeaseExpiresAt // the first instant the lease is over
	takeover := with(held, func(r *statev1.Record) {
		r.Token = idx
		r.Attempt = 2
		r.Owner = "bob"
		r.LeaseExpiresAt = lapsed + commandtest.Lease
		r.ExpiresAt = lapsed + commandtest.Retention
		r.ClaimRequestId = req
	})
	freshAt := func(now int64, fp string) *statev1.Record {
		return with(fresh, func(r *statev1.Record) {
			r.Fingerprint = []byte(fp)
			r.CreatedAt = now
			r.LeaseExpiresAt = now + commandtest.Lease
			r.ExpiresAt = now + commandtest.Retention
		})
	}
	runTransitionCases(t, []transitionCase{
		{
			name: "absent acquires", cmd: commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: now,
			wantWrite: true, wantNext: fresh, wantRes: acquired(fresh),
		},
		{
			name:  "absent, lease longer than retention, lease capped at expires_at",
			cmd:   commandtest.Claim("fp", "bob", int64(2*time.Hour), int64(time.Hour)),
			index: idx, requestID: req, now: now,
			wantWrite: true,
			wantNext: with(fresh, func(r *statev1.Record) {
				r.LeaseExpiresAt, r.ExpiresAt, r.Retention = now+int64(time.Hour), now+int64(time.Hour), int64(time.Hour)
			}),
			wantRes: acquired(with(fresh, func(r *statev1.Record) {
				r.LeaseExpiresAt, r.ExpiresAt, r.Retention = now+int64(time.Hour), now+int64(time.Hour), int64(time.Hour)
			})),
		},
		{
			name: "absent, empty fingerprint", cmd: commandtest.Claim("", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: now,
			wantWrite: true, wantNext: freshAt(now, ""), wantRes: acquired(freshAt(now, "")),
		},
		{
			name: "in progress record at expires_at is gone: acquires fresh", cur: held,
			cmd:   commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: held.ExpiresAt,
			wantWrite: true, wantNext: freshAt(held.ExpiresAt, "fp"), wantRes: acquired(freshAt(held.ExpiresAt, "fp")),
		},
		{
			name: "completed record at expires_at is gone: acquires fresh", cur: done,
			cmd:   commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: done.ExpiresAt,
			wantWrite: true, wantNext: freshAt(done.ExpiresAt, "fp"), wantRes: acquired(freshAt(done.ExpiresAt, "fp")),
		},
		{
			name: "completed record at expires_at-1 still replays", cur: done,
			cmd:   commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: done.ExpiresAt - 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_COMPLETED, Record: done},
		},
		{
			name: "expired record with another fingerprint: no mismatch, acquires fresh", cur: done,
			cmd:   commandtest.Claim("other", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: done.ExpiresAt + 1,
			wantWrite: true, wantNext: freshAt(done.ExpiresAt+1, "other"), wantRes: acquired(freshAt(done.ExpiresAt+1, "other")),
		},
		{
			name: "in progress, lease live at lease_expires_at-1", cur: held,
			cmd:   commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: lapsed - 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_IN_PROGRESS, Record: held},
		},
		{
			name: "in progress, lease live, claim fingerprint empty", cur: held,
			cmd:   commandtest.Claim("", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: commandtest.T0 + 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_IN_PROGRESS, Record: held},
		},
		{
			name: "in progress, lease live, record fingerprint empty", cur: with(held, func(r *statev1.Record) { r.Fingerprint = nil }),
			cmd:   commandtest.Claim("fp2", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: commandtest.T0 + 1,
			wantRes: &statev1.Result{
				Outcome: statev1.Outcome_OUTCOME_IN_PROGRESS,
				Record:  with(held, func(r *statev1.Record) { r.Fingerprint = nil }),
			},
		},
		{
			name: "in progress, request id 0 is not a retry of request id 0", cur: with(held, func(r *statev1.Record) { r.ClaimRequestId = 0 }),
			cmd:   commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: 0, now: commandtest.T0 + 1,
			wantRes: &statev1.Result{
				Outcome: statev1.Outcome_OUTCOME_IN_PROGRESS,
				Record:  with(held, func(r *statev1.Record) { r.ClaimRequestId = 0 }),
			},
		},
		{
			name: "retried claim with the same request id gets the same token", cur: held,
			cmd:   commandtest.Claim("fp", "alice", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: held.ClaimRequestId, now: commandtest.T0 + 1,
			wantRes: acquired(held),
		},
		{
			name: "takeover at lease_expires_at", cur: held,
			cmd:   commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: lapsed,
			wantWrite: true, wantNext: takeover, wantRes: acquired(takeover),
		},
		{
			name: "takeover at expires_at-1 is a takeover, not a fresh record", cur: held,
			cmd:   commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: held.ExpiresAt - 1,
			wantWrite: true,
			wantNext: with(takeover, func(r *statev1.Record) {
				r.LeaseExpiresAt = held.ExpiresAt - 1 + commandtest.Lease
				r.ExpiresAt = held.ExpiresAt - 1 + commandtest.Retention
			}),
			wantRes: acquired(with(takeover, func(r *statev1.Record) {
				r.LeaseExpiresAt = held.ExpiresAt - 1 + commandtest.Lease
				r.ExpiresAt = held.ExpiresAt - 1 + commandtest.Retention
			})),
		},
		{
			name: "takeover with empty claim fingerprint keeps the record's", cur: held,
			cmd:   commandtest.Claim("", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: lapsed,
			wantWrite: true, wantNext: takeover, wantRes: acquired(takeover),
		},
		{
			name:  "takeover of a record without fingerprint adopts the claim's",
			cur:   with(held, func(r *statev1.Record) { r.Fingerprint = nil }),
			cmd:   commandtest.Claim("fp2", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: lapsed,
			wantWrite: true,
			wantNext:  with(takeover, func(r *statev1.Record) { r.Fingerprint = []byte("fp2") }),
			wantRes:   acquired(with(takeover, func(r *statev1.Record) { r.Fingerprint = []byte("fp2") })),
		},
		{
			name: "takeover, lease longer than retention, lease capped at expires_at", cur: held,
			cmd:   commandtest.Claim("fp", "bob", int64(2*time.Hour), int64(time.Hour)),
			index: idx, requestID: req, now: lapsed,
			wantWrite: true,
			wantNext: with(takeover, func(r *statev1.Record) {
				r.LeaseExpiresAt, r.ExpiresAt, r.Retention = lapsed+int64(time.Hour), lapsed+int64(time.Hour), int64(time.Hour)
			}),
			wantRes: acquired(with(takeover, func(r *statev1.Record) {
				r.LeaseExpiresAt, r.ExpiresAt, r.Retention = lapsed+int64(time.Hour), lapsed+int64(time.Hour), int64(time.Hour)
			})),
		},
		{
			name: "takeover saturates attempt", cur: with(held, func(r *statev1.Record) { r.Attempt = math.MaxUint32 }),
			cmd:   commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: lapsed,
			wantWrite: true,
			wantNext:  with(takeover, func(r *statev1.Record) { r.Attempt = math.MaxUint32 }),
			wantRes:   acquired(with(takeover, func(r *statev1.Record) { r.Attempt = math.MaxUint32 })),
		},
		{
			name: "completed replays the stored response", cur: done,
			cmd:   commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: done.CompletedAt + 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_COMPLETED, Record: done},
		},
		{
			name: "completed replays to a claim without fingerprint", cur: done,
			cmd:   commandtest.Claim("", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: done.CompletedAt + 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_COMPLETED, Record: done},
		},
		{
			name: "fingerprint mismatch, lease live", cur: held,
			cmd:   commandtest.Claim("other", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: commandtest.T0 + 1,
			wantRes: failed(statev1.Error_ERROR_FINGERPRINT_MISMATCH),
		},
		{
			name: "fingerprint mismatch, lease lapsed (takeover path)", cur: held,
			cmd:   commandtest.Claim("other", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: lapsed,
			wantRes: failed(statev1.Error_ERROR_FINGERPRINT_MISMATCH),
		},
		{
			name: "fingerprint mismatch, completed", cur: done,
			cmd:   commandtest.Claim("other", "bob", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: req, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_FINGERPRINT_MISMATCH),
		},
		{
			name: "fingerprint mismatch, same request id", cur: held,
			cmd:   commandtest.Claim("other", "alice", commandtest.Lease, commandtest.Retention),
			index: idx, requestID: held.ClaimRequestId, now: commandtest.T0 + 1,
			wantRes: failed(statev1.Error_ERROR_FINGERPRINT_MISMATCH),
		},
		{
			name: "zero lease is invalid", cmd: commandtest.Claim("fp", "bob", 0, commandtest.Retention),
			index: idx, requestID: req, now: now,
			wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND),
		},
		{
			name: "negative lease is invalid", cur: held, cmd: commandtest.Claim("fp", "bob", -1, commandtest.Retention),
			index: idx, requestID: req, now: lapsed,
			wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND),
		},
		{
			name: "zero retention is invalid", cmd: commandtest.Claim("fp", "bob", commandtest.Lease, 0),
			index: idx, requestID: req, now: now,
			wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND),
		},
		{
			name: "nil claim is invalid", cur: held, cmd: &statev1.Command{Op: &statev1.Command_Claim{}},
			index: idx, requestID: req, now: lapsed,
			wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND),
		},
	})
}

func TestTransitionComplete(t *testing.T) {
	now := commandtest.T0 + int64(20*time.Second)
	resp := &statev1.Response{Code: 200, Metadata: map[string]string{"a": "b"}, Body: []byte("second")}
	completed := func(now, retention int64, resp *statev1.Response) *statev1.Record {
		return with(held, func(r *statev1.Record) {
			r.State = statev1.State_STATE_COMPLETED
			r.CompletedAt = now
			r.ExpiresAt = now + retention
			r.LeaseExpiresAt = min(held.LeaseExpiresAt, now)
			r.Response = resp
		})
	}
	ok := func(r *statev1.Record) *statev1.Result { return &statev1.Result{Record: r} }
	lapsed := held.LeaseExpiresAt + int64(10*time.Second)
	runTransitionCases(t, []transitionCase{
		{
			name: "right token, retention from claim", cur: held, cmd: commandtest.Complete(5, resp, 0), index: 9, now: now,
			wantWrite: true, wantNext: completed(now, commandtest.Retention, resp), wantRes: ok(completed(now, commandtest.Retention, resp)),
		},
		{
			name: "right token, explicit retention", cur: held, cmd: commandtest.Complete(5, resp, int64(time.Hour)), index: 9, now: now,
			wantWrite: true,
			wantNext:  completed(now, int64(time.Hour), resp),
			wantRes:   ok(completed(now, int64(time.Hour), resp)),
		},
		{
			name: "right token, no response stores an empty one", cur: held, cmd: commandtest.Complete(5, nil, 0), index: 9, now: now,
			wantWrite: true,
			wantNext:  completed(now, commandtest.Retention, &statev1.Response{}),
			wantRes:   ok(completed(now, commandtest.Retention, &statev1.Response{})),
		},
		{
			name: "lease lapsed but nobody took over", cur: held, cmd: commandtest.Complete(5, resp, 0), index: 9, now: lapsed,
			wantWrite: true, wantNext: completed(lapsed, commandtest.Retention, resp), wantRes: ok(completed(lapsed, commandtest.Retention, resp)),
		},
		{
			name: "again with the same token keeps the first response", cur: done, cmd: commandtest.Complete(5, resp, int64(time.Hour)),
			index: 9, now: done.CompletedAt + 1,
			wantRes: ok(done),
		},
		{
			name: "other token on in progress", cur: held, cmd: commandtest.Complete(4, resp, 0), index: 9, now: now,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "other token on completed", cur: done, cmd: commandtest.Complete(6, resp, 0), index: 9, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "absent", cmd: commandtest.Complete(5, resp, 0), index: 9, now: now,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "expired in progress", cur: held, cmd: commandtest.Complete(5, resp, 0), index: 9, now: held.ExpiresAt,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "expired completed, same token", cur: done, cmd: commandtest.Complete(5, resp, 0), index: 9, now: done.ExpiresAt,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "nil complete", cur: held, cmd: &statev1.Command{Op: &statev1.Command_Complete{}}, index: 9, now: now,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
	})
}

func TestTransitionRelease(t *testing.T) {
	now := commandtest.T0 + int64(20*time.Second)
	runTransitionCases(t, []transitionCase{
		{name: "absent is ok", cmd: commandtest.Release(5), index: 9, now: now, wantRes: &statev1.Result{}},
		{name: "same token deletes", cur: held, cmd: commandtest.Release(5), index: 9, now: now, wantWrite: true, wantNext: nil, wantRes: &statev1.Result{}},
		{
			name: "same token after the lease lapsed deletes", cur: held, cmd: commandtest.Release(5), index: 9, now: held.LeaseExpiresAt + 1,
			wantWrite: true, wantNext: nil, wantRes: &statev1.Result{},
		},
		{name: "other token", cur: held, cmd: commandtest.Release(4), index: 9, now: now, wantRes: failed(statev1.Error_ERROR_CLAIM_LOST)},
		{
			name: "completed, same token", cur: done, cmd: commandtest.Release(5), index: 9, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_ALREADY_COMPLETED),
		},
		{
			name: "completed, other token", cur: done, cmd: commandtest.Release(99), index: 9, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_ALREADY_COMPLETED),
		},
		{name: "expired is absent", cur: held, cmd: commandtest.Release(5), index: 9, now: held.ExpiresAt, wantRes: &statev1.Result{}},
	})
}

func TestTransitionHeartbeat(t *testing.T) {
	ext := func(lease int64) *statev1.Record {
		return with(held, func(r *statev1.Record) { r.LeaseExpiresAt = lease })
	}
	ok := func(r *statev1.Record) *statev1.Result { return &statev1.Result{Record: r} }
	mid := commandtest.T0 + int64(20*time.Second)
	lapsed := held.LeaseExpiresAt + int64(5*time.Second)
	nearEnd := held.ExpiresAt - int64(10*time.Second)
	runTransitionCases(t, []transitionCase{
		{
			name: "extends the lease", cur: held, cmd: commandtest.Heartbeat(5, commandtest.Lease), index: 9, now: mid,
			wantWrite: true, wantNext: ext(mid + commandtest.Lease), wantRes: ok(ext(mid + commandtest.Lease)),
		},
		{
			name: "may shorten the lease", cur: held, cmd: commandtest.Heartbeat(5, 1), index: 9, now: mid,
			wantWrite: true, wantNext: ext(mid + 1), wantRes: ok(ext(mid + 1)),
		},
		{
			name: "capped at expires_at", cur: held, cmd: commandtest.Heartbeat(5, commandtest.Lease), index: 9, now: nearEnd,
			wantWrite: true, wantNext: ext(held.ExpiresAt), wantRes: ok(ext(held.ExpiresAt)),
		},
		{
			name: "revives a lapsed lease nobody took over", cur: held, cmd: commandtest.Heartbeat(5, commandtest.Lease), index: 9, now: lapsed,
			wantWrite: true, wantNext: ext(lapsed + commandtest.Lease), wantRes: ok(ext(lapsed + commandtest.Lease)),
		},
		{name: "other token", cur: held, cmd: commandtest.Heartbeat(4, commandtest.Lease), index: 9, now: mid, wantRes: failed(statev1.Error_ERROR_CLAIM_LOST)},
		{name: "absent", cmd: commandtest.Heartbeat(5, commandtest.Lease), index: 9, now: mid, wantRes: failed(statev1.Error_ERROR_CLAIM_LOST)},
		{name: "expired", cur: held, cmd: commandtest.Heartbeat(5, commandtest.Lease), index: 9, now: held.ExpiresAt, wantRes: failed(statev1.Error_ERROR_CLAIM_LOST)},
		{
			name: "completed", cur: done, cmd: commandtest.Heartbeat(5, commandtest.Lease), index: 9, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_ALREADY_COMPLETED),
		},
		{name: "zero lease is invalid", cur: held, cmd: commandtest.Heartbeat(5, 0), index: 9, now: mid, wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND)},
		{name: "negative lease is invalid", cur: held, cmd: commandtest.Heartbeat(5, -5), index: 9, now: mid, wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND)},
	})
}

func TestTransitionInvalidCommands(t *testing.T) {
	now := commandtest.T0 + 1
	runTransitionCases(t, []transitionCase{
		{name: "nil command, absent", cmd: nil, index: 9, now: now, wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND)},
		{name: "nil op, absent", cmd: &statev1.Command{}, index: 9, now: now, wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND)},
		{name: "nil op, in progress", cur: held, cmd: &statev1.Command{}, index: 9, now: now, wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND)},
		{name: "nil op, completed", cur: done, cmd: &statev1.Command{}, index: 9, now: done.CompletedAt, wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND)},
		{name: "nil claim, absent", cmd: &statev1.Command{Op: &statev1.Command_Claim{}}, index: 9, now: now, wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND)},
		{name: "nil release, absent", cmd: &statev1.Command{Op: &statev1.Command_Release{}}, index: 9, now: now, wantRes: &statev1.Result{}},
		{name: "nil heartbeat, in progress", cur: held, cmd: &statev1.Command{Op: &statev1.Command_Heartbeat{}}, index: 9, now: now, wantRes: failed(statev1.Error_ERROR_CLAIM_LOST)},
	})
}

// step applies cmd to cur like the state machine does: a write replaces the
// record (nil deletes it).
func step(t *testing.T, cur *statev1.Record, cmd *statev1.Command, index uint64, now int64) (*statev1.Record, *statev1.Result) {
	t.Helper()
	next, write, res := Transition(cur, cmd, index, index+1000, now)
	if write {
		return next, res
	}
	return cur, res
}

// TestTransitionTakeoverFencesOldToken runs a takeover and then every write
// with the old token: each must be refused with CLAIM_LOST and leave the new
// holder's record alone, while the new token works.
func TestTransitionTakeoverFencesOldToken(t *testing.T) {
	rec, res := step(t, nil, commandtest.Claim("fp", "alice", commandtest.Lease, commandtest.Retention), 1, commandtest.T0)
	if res.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED || res.GetRecord().GetToken() != 1 {
		t.Fatalf("first claim = %v; want ACQUIRED token 1", res)
	}
	takeoverAt := commandtest.T0 + commandtest.Lease
	rec, res = step(t, rec, commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention), 7, takeoverAt)
	if res.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED || rec.GetToken() != 7 || rec.GetAttempt() != 2 || rec.GetOwner() != "bob" {
		t.Fatalf("takeover = %v; want ACQUIRED token 7 attempt 2 owner bob", res)
	}
	afterTakeover := proto.Clone(rec).(*statev1.Record)
	now := takeoverAt + 1
	for _, tt := range []struct {
		name string
		cmd  *statev1.Command
	}{
		{"complete", commandtest.Complete(1, &statev1.Response{Code: 500}, 0)},
		{"heartbeat", commandtest.Heartbeat(1, commandtest.Lease)},
		{"release", commandtest.Release(1)},
	} {
		next, write, res := Transition(rec, tt.cmd, 8, 0, now)
		if res.GetError() != statev1.Error_ERROR_CLAIM_LOST || write || next != nil {
			t.Errorf("%s with the old token = (%v, %v, %v); want (nil, false, CLAIM_LOST)", tt.name, next, write, res)
		}
	}
	if !proto.Equal(rec, afterTakeover) {
		t.Fatalf("record changed by fenced writes: got %v; want %v", rec, afterTakeover)
	}
	rec, res = step(t, rec, commandtest.Heartbeat(7, commandtest.Lease), 9, now)
	if res.GetError() != statev1.Error_ERROR_UNSPECIFIED || rec.GetLeaseExpiresAt() != now+commandtest.Lease {
		t.Fatalf("heartbeat with the new token = %v; want OK with lease_expires_at %d", res, now+commandtest.Lease)
	}
	rec, res = step(t, rec, commandtest.Complete(7, &statev1.Response{Code: 200}, 0), 10, now+1)
	if res.GetError() != statev1.Error_ERROR_UNSPECIFIED || rec.GetState() != statev1.State_STATE_COMPLETED || rec.GetResponse().GetCode() != 200 {
		t.Fatalf("complete with the new token = %v; want COMPLETED with code 200", res)
	}
	// A late Complete from the fenced holder cannot replace the response.
	_, res = step(t, rec, commandtest.Complete(1, &statev1.Response{Code: 500}, 0), 11, now+2)
	if res.GetError() != statev1.Error_ERROR_CLAIM_LOST {
		t.Errorf("complete with the old token after completion = %v; want CLAIM_LOST", res)
	}
}

// TestTransitionReleaseThenClaim checks that a released key is acquired
// afresh by the next claim, with the new entry's index as token.
func TestTransitionReleaseThenClaim(t *testing.T) {
	rec, _ := step(t, nil, commandtest.Claim("fp", "alice", commandtest.Lease, commandtest.Retention), 1, commandtest.T0)
	rec, res := step(t, rec, commandtest.Release(1), 2, commandtest.T0+1)
	if rec != nil || res.GetError() != statev1.Error_ERROR_UNSPECIFIED {
		t.Fatalf("release = (%v, %v); want deleted, OK", rec, res)
	}
	rec, res = step(t, rec, commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention), 3, commandtest.T0+2)
	if res.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED || rec.GetToken() != 3 || rec.GetAttempt() != 1 {
		t.Fatalf("claim after release = %v; want ACQUIRED token 3 attempt 1", res)
	}
}

// TestTransitionSaturates checks that times near MaxInt64 saturate instead
// of wrapping to the past.
func TestTransitionSaturates(t *testing.T) {
	huge := int64(math.MaxInt64)
	for _, now := range []int64{huge - int64(time.Hour), huge - 10, huge - 1} {
		rec, res := step(t, nil, commandtest.Claim("fp", "a", huge, huge), 1, now)
		if res.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED {
			t.Fatalf("claim at %d = %v; want ACQUIRED", now, res)
		}
		if rec.GetExpiresAt() != huge || rec.GetLeaseExpiresAt() != huge {
			t.Errorf("claim at %d: expires_at %d, lease_expires_at %d; want both %d", now, rec.GetExpiresAt(), rec.GetLeaseExpiresAt(), huge)
		}
		// The lease is live: a second claim sees IN_PROGRESS.
		if _, res := step(t, rec, commandtest.Claim("fp", "b", commandtest.Lease, commandtest.Retention), 2, now); res.GetOutcome() != statev1.Outcome_OUTCOME_IN_PROGRESS {
			t.Errorf("second claim at %d = %v; want IN_PROGRESS", now, res)
		}
		hb, res := step(t, rec, commandtest.Heartbeat(1, huge), 3, now)
		if res.GetError() != statev1.Error_ERROR_UNSPECIFIED || hb.GetLeaseExpiresAt() != huge {
			t.Errorf("heartbeat at %d = %v; want lease_expires_at %d", now, res, huge)
		}
		c, res := step(t, rec, commandtest.Complete(1, nil, huge), 4, now)
		if res.GetError() != statev1.Error_ERROR_UNSPECIFIED || c.GetExpiresAt() != huge || c.GetCompletedAt() != now {
			t.Errorf("complete at %d = %v; want expires_at %d completed_at %d", now, res, huge, now)
		}
	}
	// Takeover near the end of time.
	rec := with(held, func(r *statev1.Record) { r.ExpiresAt = huge; r.LeaseExpiresAt = huge - 5 })
	next, res := step(t, rec, commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention), 9, huge-5)
	if res.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED || next.GetExpiresAt() != huge || next.GetLeaseExpiresAt() != huge {
		t.Errorf("takeover at MaxInt64-5 = %v; want ACQUIRED with expires_at and lease_expires_at %d", res, huge)
	}
}

func TestAddSat(t *testing.T) {
	tests := []struct{ a, b, want int64 }{
		{0, 0, 0},
		{1, 2, 3},
		{-5, 3, -2},
		{math.MaxInt64 - 1, 1, math.MaxInt64},
		{math.MaxInt64 - 1, 2, math.MaxInt64},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64},
		{1, math.MaxInt64, math.MaxInt64},
	}
	for _, tt := range tests {
		if got := addSat(tt.a, tt.b); got != tt.want {
			t.Errorf("addSat(%d, %d) = %d; want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestTarget(t *testing.T) {
	tests := []struct {
		name   string
		cmd    *statev1.Command
		ns, k  string
		wantOK bool
	}{
		{"claim", commandtest.Claim("", "", 1, 1), "ns", "k", true},
		{"complete", commandtest.Complete(1, nil, 0), "ns", "k", true},
		{"release", commandtest.Release(1), "ns", "k", true},
		{"heartbeat", commandtest.Heartbeat(1, 1), "ns", "k", true},
		{"nil", nil, "", "", false},
		{"no op", &statev1.Command{}, "", "", false},
		{"empty namespace", &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Key: "k"}}}, "", "", false},
		{"empty key", &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "ns"}}}, "", "", false},
	}
	for _, tt := range tests {
		ns, k, ok := Target(tt.cmd)
		if ns != tt.ns || k != tt.k || ok != tt.wantOK {
			t.Errorf("%s: Target = %q, %q, %v; want %q, %q, %v", tt.name, ns, k, ok, tt.ns, tt.k, tt.wantOK)
		}
	}
}

// DecideClaim answers without the log exactly when the log would write
// nothing, and then with the log's answer.
func TestDecideClaim(t *testing.T) {
	held := &statev1.Record{State: statev1.State_STATE_IN_PROGRESS, Fingerprint: []byte("fp"), Token: 7, Attempt: 1,
		CreatedAt: commandtest.T0, LeaseExpiresAt: commandtest.T0 + commandtest.Lease, ExpiresAt: commandtest.T0 + commandtest.Retention, Retention: commandtest.Retention, ClaimRequestId: 99}
	done := proto.Clone(held).(*statev1.Record)
	done.State, done.CompletedAt, done.LeaseExpiresAt = statev1.State_STATE_COMPLETED, commandtest.T0+1, commandtest.T0+1
	done.Response = &statev1.Response{Code: 200, Body: []byte("ok")}
	claim := commandtest.Claim("fp", "", commandtest.Lease, commandtest.Retention).GetClaim()
	other := commandtest.Claim("other", "", commandtest.Lease, commandtest.Retention).GetClaim()
	for _, tc := range []struct {
		name     string
		cur      *statev1.Record
		c        *statev1.Claim
		reqID    uint64
		now      int64
		readOnly bool
		outcome  statev1.Outcome
		err      statev1.Error
	}{
		{"absent: creates", nil, claim, 1, commandtest.T0, false, 0, 0},
		{"completed: replays", done, claim, 1, commandtest.T0 + 2, true, statev1.Outcome_OUTCOME_COMPLETED, 0},
		{"completed, last instant", done, claim, 1, done.ExpiresAt - 1, true, statev1.Outcome_OUTCOME_COMPLETED, 0},
		{"completed, expired: creates", done, claim, 1, done.ExpiresAt, false, 0, 0},
		{"held, live lease", held, claim, 1, held.LeaseExpiresAt - 1, true, statev1.Outcome_OUTCOME_IN_PROGRESS, 0},
		{"held, lease over: takes over", held, claim, 1, held.LeaseExpiresAt, false, 0, 0},
		{"held, own request id", held, claim, 99, commandtest.T0 + 1, true, statev1.Outcome_OUTCOME_ACQUIRED, 0},
		{"fingerprint differs", done, other, 1, commandtest.T0 + 2, true, 0, statev1.Error_ERROR_FINGERPRINT_MISMATCH},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, readOnly := DecideClaim(tc.cur, tc.c, tc.reqID, tc.now)
			if readOnly != tc.readOnly {
				t.Fatalf("readOnly = %v; want %v", readOnly, tc.readOnly)
			}
			// The log's answer at the same time, for comparison.
			_, write, want := Transition(tc.cur, &statev1.Command{Op: &statev1.Command_Claim{Claim: tc.c}}, 1000, tc.reqID, tc.now)
			if write == readOnly {
				t.Fatalf("readOnly %v but the log would write: %v", readOnly, write)
			}
			if !readOnly {
				return
			}
			if !proto.Equal(res, want) || res.GetOutcome() != tc.outcome || res.GetError() != tc.err {
				t.Fatalf("got %v; want %v (outcome %v, error %v)", res, want, tc.outcome, tc.err)
			}
		})
	}
}

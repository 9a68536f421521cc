package rules

import (
	"math"
	"testing"
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// Times in the transition tests: log time in Unix nanoseconds.
const (
	t0 = int64(1_700_000_000) * int64(time.Second)

	testLease     = int64(30 * time.Second)
	testRetention = int64(24 * time.Hour)
)

func claimCmd(fp, owner string, lease, retention int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
		Namespace: "ns", Key: "k", Fingerprint: []byte(fp), Owner: owner, Lease: lease, Retention: retention,
	}}}
}

func completeCmd(token uint64, resp *statev1.Response, retention int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
		Namespace: "ns", Key: "k", Token: token, Response: resp, Retention: retention,
	}}}
}

func releaseCmd(token uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{
		Namespace: "ns", Key: "k", Token: token,
	}}}
}

func heartbeatCmd(token uint64, lease int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{
		Namespace: "ns", Key: "k", Token: token, Lease: lease,
	}}}
}

// with returns a copy of r changed by fn.
func with(r *statev1.Record, fn func(*statev1.Record)) *statev1.Record {
	c := proto.Clone(r).(*statev1.Record)
	fn(c)
	return c
}

// held is an IN_PROGRESS record claimed at t0 by entry 5.
var held = &statev1.Record{
	State:          statev1.State_STATE_IN_PROGRESS,
	Fingerprint:    []byte("fp"),
	Token:          5,
	Attempt:        1,
	Owner:          "alice",
	CreatedAt:      t0,
	LeaseExpiresAt: t0 + testLease,
	ExpiresAt:      t0 + testRetention,
	Retention:      testRetention,
	ClaimRequestId: 100,
}

var storedResponse = &statev1.Response{Code: 201, Metadata: map[string]string{"content-type": "text/plain"}, Body: []byte("first")}

// done is held, completed 10 s after t0.
var done = with(held, func(r *statev1.Record) {
	r.State = statev1.State_STATE_COMPLETED
	r.CompletedAt = t0 + int64(10*time.Second)
	r.LeaseExpiresAt = t0 + int64(10*time.Second)
	r.ExpiresAt = t0 + int64(10*time.Second) + testRetention
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
	now := t0 + int64(time.Minute)
	fresh := &statev1.Record{
		State:          statev1.State_STATE_IN_PROGRESS,
		Fingerprint:    []byte("fp"),
		Token:          idx,
		Attempt:        1,
		Owner:          "bob",
		CreatedAt:      now,
		LeaseExpiresAt: now + testLease,
		ExpiresAt:      now + testRetention,
		Retention:      testRetention,
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
		r.LeaseExpiresAt = lapsed + testLease
		r.ExpiresAt = lapsed + testRetention
		r.ClaimRequestId = req
	})
	freshAt := func(now int64, fp string) *statev1.Record {
		return with(fresh, func(r *statev1.Record) {
			r.Fingerprint = []byte(fp)
			r.CreatedAt = now
			r.LeaseExpiresAt = now + testLease
			r.ExpiresAt = now + testRetention
		})
	}
	runTransitionCases(t, []transitionCase{
		{
			name: "absent acquires", cmd: claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: req, now: now,
			wantWrite: true, wantNext: fresh, wantRes: acquired(fresh),
		},
		{
			name:  "absent, lease longer than retention, lease capped at expires_at",
			cmd:   claimCmd("fp", "bob", int64(2*time.Hour), int64(time.Hour)),
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
			name: "absent, empty fingerprint", cmd: claimCmd("", "bob", testLease, testRetention),
			index: idx, requestID: req, now: now,
			wantWrite: true, wantNext: freshAt(now, ""), wantRes: acquired(freshAt(now, "")),
		},
		{
			name: "in progress record at expires_at is gone: acquires fresh", cur: held,
			cmd:   claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: req, now: held.ExpiresAt,
			wantWrite: true, wantNext: freshAt(held.ExpiresAt, "fp"), wantRes: acquired(freshAt(held.ExpiresAt, "fp")),
		},
		{
			name: "completed record at expires_at is gone: acquires fresh", cur: done,
			cmd:   claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: req, now: done.ExpiresAt,
			wantWrite: true, wantNext: freshAt(done.ExpiresAt, "fp"), wantRes: acquired(freshAt(done.ExpiresAt, "fp")),
		},
		{
			name: "completed record at expires_at-1 still replays", cur: done,
			cmd:   claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: req, now: done.ExpiresAt - 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_COMPLETED, Record: done},
		},
		{
			name: "expired record with another fingerprint: no mismatch, acquires fresh", cur: done,
			cmd:   claimCmd("other", "bob", testLease, testRetention),
			index: idx, requestID: req, now: done.ExpiresAt + 1,
			wantWrite: true, wantNext: freshAt(done.ExpiresAt+1, "other"), wantRes: acquired(freshAt(done.ExpiresAt+1, "other")),
		},
		{
			name: "in progress, lease live at lease_expires_at-1", cur: held,
			cmd:   claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: req, now: lapsed - 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_IN_PROGRESS, Record: held},
		},
		{
			name: "in progress, lease live, claim fingerprint empty", cur: held,
			cmd:   claimCmd("", "bob", testLease, testRetention),
			index: idx, requestID: req, now: t0 + 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_IN_PROGRESS, Record: held},
		},
		{
			name: "in progress, lease live, record fingerprint empty", cur: with(held, func(r *statev1.Record) { r.Fingerprint = nil }),
			cmd:   claimCmd("fp2", "bob", testLease, testRetention),
			index: idx, requestID: req, now: t0 + 1,
			wantRes: &statev1.Result{
				Outcome: statev1.Outcome_OUTCOME_IN_PROGRESS,
				Record:  with(held, func(r *statev1.Record) { r.Fingerprint = nil }),
			},
		},
		{
			name: "in progress, request id 0 is not a retry of request id 0", cur: with(held, func(r *statev1.Record) { r.ClaimRequestId = 0 }),
			cmd:   claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: 0, now: t0 + 1,
			wantRes: &statev1.Result{
				Outcome: statev1.Outcome_OUTCOME_IN_PROGRESS,
				Record:  with(held, func(r *statev1.Record) { r.ClaimRequestId = 0 }),
			},
		},
		{
			name: "retried claim with the same request id gets the same token", cur: held,
			cmd:   claimCmd("fp", "alice", testLease, testRetention),
			index: idx, requestID: held.ClaimRequestId, now: t0 + 1,
			wantRes: acquired(held),
		},
		{
			name: "takeover at lease_expires_at", cur: held,
			cmd:   claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: req, now: lapsed,
			wantWrite: true, wantNext: takeover, wantRes: acquired(takeover),
		},
		{
			name: "takeover at expires_at-1 is a takeover, not a fresh record", cur: held,
			cmd:   claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: req, now: held.ExpiresAt - 1,
			wantWrite: true,
			wantNext: with(takeover, func(r *statev1.Record) {
				r.LeaseExpiresAt = held.ExpiresAt - 1 + testLease
				r.ExpiresAt = held.ExpiresAt - 1 + testRetention
			}),
			wantRes: acquired(with(takeover, func(r *statev1.Record) {
				r.LeaseExpiresAt = held.ExpiresAt - 1 + testLease
				r.ExpiresAt = held.ExpiresAt - 1 + testRetention
			})),
		},
		{
			name: "takeover with empty claim fingerprint keeps the record's", cur: held,
			cmd:   claimCmd("", "bob", testLease, testRetention),
			index: idx, requestID: req, now: lapsed,
			wantWrite: true, wantNext: takeover, wantRes: acquired(takeover),
		},
		{
			name:  "takeover of a record without fingerprint adopts the claim's",
			cur:   with(held, func(r *statev1.Record) { r.Fingerprint = nil }),
			cmd:   claimCmd("fp2", "bob", testLease, testRetention),
			index: idx, requestID: req, now: lapsed,
			wantWrite: true,
			wantNext:  with(takeover, func(r *statev1.Record) { r.Fingerprint = []byte("fp2") }),
			wantRes:   acquired(with(takeover, func(r *statev1.Record) { r.Fingerprint = []byte("fp2") })),
		},
		{
			name: "takeover, lease longer than retention, lease capped at expires_at", cur: held,
			cmd:   claimCmd("fp", "bob", int64(2*time.Hour), int64(time.Hour)),
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
			cmd:   claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: req, now: lapsed,
			wantWrite: true,
			wantNext:  with(takeover, func(r *statev1.Record) { r.Attempt = math.MaxUint32 }),
			wantRes:   acquired(with(takeover, func(r *statev1.Record) { r.Attempt = math.MaxUint32 })),
		},
		{
			name: "completed replays the stored response", cur: done,
			cmd:   claimCmd("fp", "bob", testLease, testRetention),
			index: idx, requestID: req, now: done.CompletedAt + 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_COMPLETED, Record: done},
		},
		{
			name: "completed replays to a claim without fingerprint", cur: done,
			cmd:   claimCmd("", "bob", testLease, testRetention),
			index: idx, requestID: req, now: done.CompletedAt + 1,
			wantRes: &statev1.Result{Outcome: statev1.Outcome_OUTCOME_COMPLETED, Record: done},
		},
		{
			name: "fingerprint mismatch, lease live", cur: held,
			cmd:   claimCmd("other", "bob", testLease, testRetention),
			index: idx, requestID: req, now: t0 + 1,
			wantRes: failed(statev1.Error_ERROR_FINGERPRINT_MISMATCH),
		},
		{
			name: "fingerprint mismatch, lease lapsed (takeover path)", cur: held,
			cmd:   claimCmd("other", "bob", testLease, testRetention),
			index: idx, requestID: req, now: lapsed,
			wantRes: failed(statev1.Error_ERROR_FINGERPRINT_MISMATCH),
		},
		{
			name: "fingerprint mismatch, completed", cur: done,
			cmd:   claimCmd("other", "bob", testLease, testRetention),
			index: idx, requestID: req, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_FINGERPRINT_MISMATCH),
		},
		{
			name: "fingerprint mismatch, same request id", cur: held,
			cmd:   claimCmd("other", "alice", testLease, testRetention),
			index: idx, requestID: held.ClaimRequestId, now: t0 + 1,
			wantRes: failed(statev1.Error_ERROR_FINGERPRINT_MISMATCH),
		},
		{
			name: "zero lease is invalid", cmd: claimCmd("fp", "bob", 0, testRetention),
			index: idx, requestID: req, now: now,
			wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND),
		},
		{
			name: "negative lease is invalid", cur: held, cmd: claimCmd("fp", "bob", -1, testRetention),
			index: idx, requestID: req, now: lapsed,
			wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND),
		},
		{
			name: "zero retention is invalid", cmd: claimCmd("fp", "bob", testLease, 0),
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
	now := t0 + int64(20*time.Second)
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
			name: "right token, retention from claim", cur: held, cmd: completeCmd(5, resp, 0), index: 9, now: now,
			wantWrite: true, wantNext: completed(now, testRetention, resp), wantRes: ok(completed(now, testRetention, resp)),
		},
		{
			name: "right token, explicit retention", cur: held, cmd: completeCmd(5, resp, int64(time.Hour)), index: 9, now: now,
			wantWrite: true,
			wantNext:  completed(now, int64(time.Hour), resp),
			wantRes:   ok(completed(now, int64(time.Hour), resp)),
		},
		{
			name: "right token, no response stores an empty one", cur: held, cmd: completeCmd(5, nil, 0), index: 9, now: now,
			wantWrite: true,
			wantNext:  completed(now, testRetention, &statev1.Response{}),
			wantRes:   ok(completed(now, testRetention, &statev1.Response{})),
		},
		{
			name: "lease lapsed but nobody took over", cur: held, cmd: completeCmd(5, resp, 0), index: 9, now: lapsed,
			wantWrite: true, wantNext: completed(lapsed, testRetention, resp), wantRes: ok(completed(lapsed, testRetention, resp)),
		},
		{
			name: "again with the same token keeps the first response", cur: done, cmd: completeCmd(5, resp, int64(time.Hour)),
			index: 9, now: done.CompletedAt + 1,
			wantRes: ok(done),
		},
		{
			name: "other token on in progress", cur: held, cmd: completeCmd(4, resp, 0), index: 9, now: now,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "other token on completed", cur: done, cmd: completeCmd(6, resp, 0), index: 9, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "absent", cmd: completeCmd(5, resp, 0), index: 9, now: now,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "expired in progress", cur: held, cmd: completeCmd(5, resp, 0), index: 9, now: held.ExpiresAt,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "expired completed, same token", cur: done, cmd: completeCmd(5, resp, 0), index: 9, now: done.ExpiresAt,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
		{
			name: "nil complete", cur: held, cmd: &statev1.Command{Op: &statev1.Command_Complete{}}, index: 9, now: now,
			wantRes: failed(statev1.Error_ERROR_CLAIM_LOST),
		},
	})
}

func TestTransitionRelease(t *testing.T) {
	now := t0 + int64(20*time.Second)
	runTransitionCases(t, []transitionCase{
		{name: "absent is ok", cmd: releaseCmd(5), index: 9, now: now, wantRes: &statev1.Result{}},
		{name: "same token deletes", cur: held, cmd: releaseCmd(5), index: 9, now: now, wantWrite: true, wantNext: nil, wantRes: &statev1.Result{}},
		{
			name: "same token after the lease lapsed deletes", cur: held, cmd: releaseCmd(5), index: 9, now: held.LeaseExpiresAt + 1,
			wantWrite: true, wantNext: nil, wantRes: &statev1.Result{},
		},
		{name: "other token", cur: held, cmd: releaseCmd(4), index: 9, now: now, wantRes: failed(statev1.Error_ERROR_CLAIM_LOST)},
		{
			name: "completed, same token", cur: done, cmd: releaseCmd(5), index: 9, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_ALREADY_COMPLETED),
		},
		{
			name: "completed, other token", cur: done, cmd: releaseCmd(99), index: 9, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_ALREADY_COMPLETED),
		},
		{name: "expired is absent", cur: held, cmd: releaseCmd(5), index: 9, now: held.ExpiresAt, wantRes: &statev1.Result{}},
	})
}

func TestTransitionHeartbeat(t *testing.T) {
	ext := func(lease int64) *statev1.Record {
		return with(held, func(r *statev1.Record) { r.LeaseExpiresAt = lease })
	}
	ok := func(r *statev1.Record) *statev1.Result { return &statev1.Result{Record: r} }
	mid := t0 + int64(20*time.Second)
	lapsed := held.LeaseExpiresAt + int64(5*time.Second)
	nearEnd := held.ExpiresAt - int64(10*time.Second)
	runTransitionCases(t, []transitionCase{
		{
			name: "extends the lease", cur: held, cmd: heartbeatCmd(5, testLease), index: 9, now: mid,
			wantWrite: true, wantNext: ext(mid + testLease), wantRes: ok(ext(mid + testLease)),
		},
		{
			name: "may shorten the lease", cur: held, cmd: heartbeatCmd(5, 1), index: 9, now: mid,
			wantWrite: true, wantNext: ext(mid + 1), wantRes: ok(ext(mid + 1)),
		},
		{
			name: "capped at expires_at", cur: held, cmd: heartbeatCmd(5, testLease), index: 9, now: nearEnd,
			wantWrite: true, wantNext: ext(held.ExpiresAt), wantRes: ok(ext(held.ExpiresAt)),
		},
		{
			name: "revives a lapsed lease nobody took over", cur: held, cmd: heartbeatCmd(5, testLease), index: 9, now: lapsed,
			wantWrite: true, wantNext: ext(lapsed + testLease), wantRes: ok(ext(lapsed + testLease)),
		},
		{name: "other token", cur: held, cmd: heartbeatCmd(4, testLease), index: 9, now: mid, wantRes: failed(statev1.Error_ERROR_CLAIM_LOST)},
		{name: "absent", cmd: heartbeatCmd(5, testLease), index: 9, now: mid, wantRes: failed(statev1.Error_ERROR_CLAIM_LOST)},
		{name: "expired", cur: held, cmd: heartbeatCmd(5, testLease), index: 9, now: held.ExpiresAt, wantRes: failed(statev1.Error_ERROR_CLAIM_LOST)},
		{
			name: "completed", cur: done, cmd: heartbeatCmd(5, testLease), index: 9, now: done.CompletedAt + 1,
			wantRes: failed(statev1.Error_ERROR_ALREADY_COMPLETED),
		},
		{name: "zero lease is invalid", cur: held, cmd: heartbeatCmd(5, 0), index: 9, now: mid, wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND)},
		{name: "negative lease is invalid", cur: held, cmd: heartbeatCmd(5, -5), index: 9, now: mid, wantRes: failed(statev1.Error_ERROR_INVALID_COMMAND)},
	})
}

func TestTransitionInvalidCommands(t *testing.T) {
	now := t0 + 1
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
	rec, res := step(t, nil, claimCmd("fp", "alice", testLease, testRetention), 1, t0)
	if res.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED || res.GetRecord().GetToken() != 1 {
		t.Fatalf("first claim = %v; want ACQUIRED token 1", res)
	}
	takeoverAt := t0 + testLease
	rec, res = step(t, rec, claimCmd("fp", "bob", testLease, testRetention), 7, takeoverAt)
	if res.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED || rec.GetToken() != 7 || rec.GetAttempt() != 2 || rec.GetOwner() != "bob" {
		t.Fatalf("takeover = %v; want ACQUIRED token 7 attempt 2 owner bob", res)
	}
	afterTakeover := proto.Clone(rec).(*statev1.Record)
	now := takeoverAt + 1
	for _, tt := range []struct {
		name string
		cmd  *statev1.Command
	}{
		{"complete", completeCmd(1, &statev1.Response{Code: 500}, 0)},
		{"heartbeat", heartbeatCmd(1, testLease)},
		{"release", releaseCmd(1)},
	} {
		next, write, res := Transition(rec, tt.cmd, 8, 0, now)
		if res.GetError() != statev1.Error_ERROR_CLAIM_LOST || write || next != nil {
			t.Errorf("%s with the old token = (%v, %v, %v); want (nil, false, CLAIM_LOST)", tt.name, next, write, res)
		}
	}
	if !proto.Equal(rec, afterTakeover) {
		t.Fatalf("record changed by fenced writes: got %v; want %v", rec, afterTakeover)
	}
	rec, res = step(t, rec, heartbeatCmd(7, testLease), 9, now)
	if res.GetError() != statev1.Error_ERROR_UNSPECIFIED || rec.GetLeaseExpiresAt() != now+testLease {
		t.Fatalf("heartbeat with the new token = %v; want OK with lease_expires_at %d", res, now+testLease)
	}
	rec, res = step(t, rec, completeCmd(7, &statev1.Response{Code: 200}, 0), 10, now+1)
	if res.GetError() != statev1.Error_ERROR_UNSPECIFIED || rec.GetState() != statev1.State_STATE_COMPLETED || rec.GetResponse().GetCode() != 200 {
		t.Fatalf("complete with the new token = %v; want COMPLETED with code 200", res)
	}
	// A late Complete from the fenced holder cannot replace the response.
	_, res = step(t, rec, completeCmd(1, &statev1.Response{Code: 500}, 0), 11, now+2)
	if res.GetError() != statev1.Error_ERROR_CLAIM_LOST {
		t.Errorf("complete with the old token after completion = %v; want CLAIM_LOST", res)
	}
}

// TestTransitionReleaseThenClaim checks that a released key is acquired
// afresh by the next claim, with the new entry's index as token.
func TestTransitionReleaseThenClaim(t *testing.T) {
	rec, _ := step(t, nil, claimCmd("fp", "alice", testLease, testRetention), 1, t0)
	rec, res := step(t, rec, releaseCmd(1), 2, t0+1)
	if rec != nil || res.GetError() != statev1.Error_ERROR_UNSPECIFIED {
		t.Fatalf("release = (%v, %v); want deleted, OK", rec, res)
	}
	rec, res = step(t, rec, claimCmd("fp", "bob", testLease, testRetention), 3, t0+2)
	if res.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED || rec.GetToken() != 3 || rec.GetAttempt() != 1 {
		t.Fatalf("claim after release = %v; want ACQUIRED token 3 attempt 1", res)
	}
}

// TestTransitionSaturates checks that times near MaxInt64 saturate instead
// of wrapping to the past.
func TestTransitionSaturates(t *testing.T) {
	huge := int64(math.MaxInt64)
	for _, now := range []int64{huge - int64(time.Hour), huge - 10, huge - 1} {
		rec, res := step(t, nil, claimCmd("fp", "a", huge, huge), 1, now)
		if res.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED {
			t.Fatalf("claim at %d = %v; want ACQUIRED", now, res)
		}
		if rec.GetExpiresAt() != huge || rec.GetLeaseExpiresAt() != huge {
			t.Errorf("claim at %d: expires_at %d, lease_expires_at %d; want both %d", now, rec.GetExpiresAt(), rec.GetLeaseExpiresAt(), huge)
		}
		// The lease is live: a second claim sees IN_PROGRESS.
		if _, res := step(t, rec, claimCmd("fp", "b", testLease, testRetention), 2, now); res.GetOutcome() != statev1.Outcome_OUTCOME_IN_PROGRESS {
			t.Errorf("second claim at %d = %v; want IN_PROGRESS", now, res)
		}
		hb, res := step(t, rec, heartbeatCmd(1, huge), 3, now)
		if res.GetError() != statev1.Error_ERROR_UNSPECIFIED || hb.GetLeaseExpiresAt() != huge {
			t.Errorf("heartbeat at %d = %v; want lease_expires_at %d", now, res, huge)
		}
		c, res := step(t, rec, completeCmd(1, nil, huge), 4, now)
		if res.GetError() != statev1.Error_ERROR_UNSPECIFIED || c.GetExpiresAt() != huge || c.GetCompletedAt() != now {
			t.Errorf("complete at %d = %v; want expires_at %d completed_at %d", now, res, huge, now)
		}
	}
	// Takeover near the end of time.
	rec := with(held, func(r *statev1.Record) { r.ExpiresAt = huge; r.LeaseExpiresAt = huge - 5 })
	next, res := step(t, rec, claimCmd("fp", "bob", testLease, testRetention), 9, huge-5)
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
		{"claim", claimCmd("", "", 1, 1), "ns", "k", true},
		{"complete", completeCmd(1, nil, 0), "ns", "k", true},
		{"release", releaseCmd(1), "ns", "k", true},
		{"heartbeat", heartbeatCmd(1, 1), "ns", "k", true},
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
		CreatedAt: t0, LeaseExpiresAt: t0 + testLease, ExpiresAt: t0 + testRetention, Retention: testRetention, ClaimRequestId: 99}
	done := proto.Clone(held).(*statev1.Record)
	done.State, done.CompletedAt, done.LeaseExpiresAt = statev1.State_STATE_COMPLETED, t0+1, t0+1
	done.Response = &statev1.Response{Code: 200, Body: []byte("ok")}
	claim := claimCmd("fp", "", testLease, testRetention).GetClaim()
	other := claimCmd("other", "", testLease, testRetention).GetClaim()
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
		{"absent: creates", nil, claim, 1, t0, false, 0, 0},
		{"completed: replays", done, claim, 1, t0 + 2, true, statev1.Outcome_OUTCOME_COMPLETED, 0},
		{"completed, last instant", done, claim, 1, done.ExpiresAt - 1, true, statev1.Outcome_OUTCOME_COMPLETED, 0},
		{"completed, expired: creates", done, claim, 1, done.ExpiresAt, false, 0, 0},
		{"held, live lease", held, claim, 1, held.LeaseExpiresAt - 1, true, statev1.Outcome_OUTCOME_IN_PROGRESS, 0},
		{"held, lease over: takes over", held, claim, 1, held.LeaseExpiresAt, false, 0, 0},
		{"held, own request id", held, claim, 99, t0 + 1, true, statev1.Outcome_OUTCOME_ACQUIRED, 0},
		{"fingerprint differs", done, other, 1, t0 + 2, true, 0, statev1.Error_ERROR_FINGERPRINT_MISMATCH},
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

package checker

import (
	"testing"

	"github.com/keystore-dev/keystore/cluster-test/history"
)

// hidden is r as an IN_PROGRESS answer or a Get shows it to anyone but the
// holder: without the token.
func hidden(r *history.Record) *history.Record {
	return with(r, func(r *history.Record) { r.Token = 0 })
}

// TestCheckWithHiddenTokens runs TestCheck's histories as the server
// answers them once it hides the tokens of live claims: every case must be
// judged the same, but for the few listed whose finding needed a token only
// a hidden output showed.
func TestCheckWithHiddenTokens(t *testing.T) {
	weaker := map[string]counts{
		// Attempt 3 of the record created at 1s is no record any
		// linearizable output shows; with its token, token 5 proved it a
		// phantom (token 5 is attempt 1). Without, it may be a takeover
		// granted to a Claim whose answer was lost.
		"stale read of a record that never was": legal,
	}
	for _, tt := range checkCases {
		t.Run(tt.name, func(t *testing.T) {
			want, ok := weaker[tt.name]
			if !ok {
				want = tt.want
			}
			checkCounts(t, hideLiveTokens(tt.ops, nil), want)
		})
	}
}

func withOp(op history.Op, fn func(*history.Op)) history.Op {
	fn(&op)
	return op
}

func TestCheckHiddenTokens(t *testing.T) {
	r5hbHidden := hidden(r5hb)
	r9same := with(held(9, 1, 1, 1), func(r *history.Record) { r.ExpiresAt = at(1) + int64(2*retention) })
	tests := []checkCase{
		// Legal histories.
		{"every live token hidden", []history.Op{
			acq(0, 10, 50, r5),
			seen(1, 20, 30, hidden(r5)), // returned first, linearized after
			get(2, 25, 35, hidden(r5)),
			heartbeat(0, 60, 70, 5, history.OK, r5hb),
			seen(1, 80, 90, r5hbHidden),
			complete(0, 100, 110, 5, "paid", history.OK, done(r5hb, 15, "paid")),
			replayed(1, 120, 130, done(r5hb, 15, "paid")),
		}, legal},
		{"an admin's get shows the token", []history.Op{
			acq(0, 10, 20, r5),
			get(1, 30, 40, r5),
			seen(2, 50, 60, hidden(r5)),
			acq(1, 70, 80, r9take),
			get(2, 90, 100, hidden(r9take)),
			get(3, 110, 120, r9take),
		}, legal},
		{"hidden reads across a takeover", []history.Op{
			acq(0, 10, 20, r5),
			seen(1, 30, 60, hidden(r5)), // concurrent with the takeover
			acq(2, 40, 50, r9take),
			seen(3, 70, 80, hidden(r9take)),
		}, legal},
		{"hidden read of a record made after the completion expired", []history.Op{
			acq(0, 10, 20, r5),
			complete(0, 30, 40, 5, "paid", history.OK, r5d),
			get(1, 50, 60, hidden(held(9, 1, 3700, 3700))),
		}, legal},
		{"hidden lease end of a released claim", []history.Op{
			acq(0, 10, 20, r5),
			get(1, 30, 40, hidden(r5)),
			release(0, 50, 60, 5, history.OK),
			acq(1, 70, 80, held(9, 1, 5, 5)),
		}, legal},
		{"hidden reads of a record released at once", []history.Op{
			// Token 5 is released at its own created_at, 1s, and an
			// unanswered Claim granted token 9 afresh at 1s with a longer
			// retention: both are attempt 1 created at 1s, so the Gets of
			// token 9's record must not be judged as token 5's.
			acq(0, 10, 20, r5),
			release(0, 30, 40, 5, history.OK),
			withOp(claimOp(1, 35, 45, history.Indeterminate, "", nil), func(op *history.Op) { op.Retention = 2 * retention }),
			get(2, 50, 60, hidden(r9same)),
			staleGet(2, 70, 80, hidden(r9same)),
		}, legal},

		// Violations still caught.
		{"hidden read shows a lease a takeover ignored", []history.Op{
			acq(0, 10, 20, r5),
			heartbeat(0, 30, 40, 5, history.Indeterminate, nil), // ran the lease to 19s
			get(1, 50, 60, r5hbHidden),
			acq(2, 70, 80, held(9, 2, 1, 15)),
		}, counts{verdict: Ok, double: 1}}, // the model lets the heartbeat apply again, lax about its lease
		{"hidden read of the fenced record", []history.Op{
			acq(0, 10, 20, r5),
			acq(1, 30, 40, r9take),
			seen(2, 50, 60, hidden(r5)),
		}, counts{verdict: Illegal}},
		{"hidden read after completion shows IN_PROGRESS", []history.Op{
			acq(0, 10, 20, r5),
			complete(0, 30, 40, 5, "paid", history.OK, r5d),
			seen(1, 50, 60, hidden(r5)),
			get(2, 70, 80, hidden(r5)),
		}, counts{verdict: Illegal, lost: 2, stale: 1}},
		{"hidden read after completion shows a newer record too early", []history.Op{
			acq(0, 10, 20, r5),
			complete(0, 30, 40, 5, "paid", history.OK, r5d),
			get(1, 50, 60, hidden(r9fresh)),
		}, counts{verdict: Illegal, lost: 1}},
		{"hidden read shows another lease", []history.Op{
			acq(0, 10, 20, r5),
			seen(1, 30, 40, hidden(with(r5, func(r *history.Record) { r.LeaseExpiresAt = at(12) }))),
		}, counts{verdict: Illegal}},
		{"stale hidden read of a record that never was", []history.Op{
			acq(0, 10, 20, r5),
			staleGet(1, 30, 40, hidden(with(r5, func(r *history.Record) { r.ExpiresAt += int64(lease) }))),
		}, counts{verdict: Ok, phantoms: 1}},
		{"acquired without a token", []history.Op{
			acq(0, 10, 20, hidden(r5)),
		}, counts{verdict: Illegal}},
		{"retried claim acquired without a token", []history.Op{
			acq(0, 10, 20, r5),
			acq(0, 30, 40, hidden(r5)),
		}, counts{verdict: Illegal, double: 1}}, // token 0 ACQUIRED too
		{"heartbeat answered without a token", []history.Op{
			acq(0, 10, 20, r5),
			heartbeat(0, 30, 40, 5, history.OK, r5hbHidden),
		}, counts{verdict: Illegal}},
		{"replay without a token", []history.Op{
			acq(0, 10, 20, r5),
			complete(0, 30, 40, 5, "paid", history.OK, r5d),
			replayed(1, 50, 60, with(r5d, func(r *history.Record) { r.Token = 0 })),
		}, counts{verdict: Illegal, lost: 1, replay: 1}}, // token 0: older than 5, and no Complete presented it
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkCounts(t, tt.ops, tt.want)
		})
	}
}

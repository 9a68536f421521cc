package api_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/api"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestClaimAcquires(t *testing.T) {
	for _, tc := range []struct {
		name                string
		req                 *keystorev1.ClaimRequest
		wantLease, wantLife time.Duration
	}{
		{
			name:      "defaults",
			req:       &keystorev1.ClaimRequest{Namespace: ns, Key: "order-1"},
			wantLease: 30 * time.Second, wantLife: 24 * time.Hour,
		},
		{
			name: "explicit",
			req: &keystorev1.ClaimRequest{Namespace: ns, Key: "order-1", Fingerprint: []byte{1, 2, 3},
				Lease: durationpb.New(10 * time.Second), Retention: durationpb.New(time.Hour), Owner: "host-a/req-7"},
			wantLease: 10 * time.Second, wantLife: time.Hour,
		},
		{
			name: "lease capped at retention",
			req: &keystorev1.ClaimRequest{Namespace: ns, Key: "ключ-1",
				Lease: durationpb.New(time.Hour), Retention: durationpb.New(time.Minute)},
			wantLease: time.Minute, wantLife: time.Minute,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, api.Config{}, false)
			resp, err := env.client.Claim(ctxT(t), tc.req)
			if err != nil {
				t.Fatalf("Claim: %v", err)
			}
			if resp.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
				t.Fatalf("got outcome %v; want ACQUIRED", resp.GetOutcome())
			}
			if resp.GetToken() == 0 {
				t.Fatalf("got token 0; want a fencing token")
			}
			checkRecord(t, resp.GetRecord(), &keystorev1.Record{
				Namespace:      tc.req.GetNamespace(),
				Key:            tc.req.GetKey(),
				State:          keystorev1.RecordState_RECORD_STATE_IN_PROGRESS,
				Fingerprint:    tc.req.GetFingerprint(),
				Token:          resp.GetToken(),
				Attempt:        1,
				Owner:          tc.req.GetOwner(),
				CreatedAt:      ts(t0),
				LeaseExpiresAt: ts(t0.Add(tc.wantLease)),
				ExpiresAt:      ts(t0.Add(tc.wantLife)),
			})
		})
	}
}

func TestClaimInProgress(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	first := env.claim(t, "order-1", 10*time.Second)
	env.clock.Advance(time.Second)
	second := env.claim(t, "order-1", 10*time.Second)
	if got := second.GetOutcome(); got != keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS {
		t.Fatalf("got outcome %v; want IN_PROGRESS", got)
	}
	if second.GetToken() != 0 {
		t.Errorf("got token %d; want 0 (the caller does not hold the claim)", second.GetToken())
	}
	// The caller sees the holder's record, lease end included, but not its
	// token (the claim is not the caller's).
	checkRecord(t, second.GetRecord(), withoutToken(first.GetRecord()))
}

func TestCompleteAndReplay(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	token := env.acquire(t, "order-1", 10*time.Second)
	stored := &keystorev1.Response{
		Code:     201,
		Metadata: map[string]string{"content-type": "application/octet-stream", "x-trace": "ключ", "empty": ""},
		Body:     []byte{0x00, 0xff, 0xfe, '\n', 'o', 'k', 0x00},
	}
	env.clock.Advance(2 * time.Second)
	rec := env.complete(t, "order-1", token, stored)
	done := t0.Add(2 * time.Second)
	wantRec := &keystorev1.Record{
		Namespace:      ns,
		Key:            "order-1",
		State:          keystorev1.RecordState_RECORD_STATE_COMPLETED,
		Token:          token,
		Attempt:        1,
		CreatedAt:      ts(t0),
		LeaseExpiresAt: ts(done), // the lease ends with the work
		CompletedAt:    ts(done),
		ExpiresAt:      ts(done.Add(24 * time.Hour)), // retention given at Claim
		Response:       stored,
	}
	checkRecord(t, rec, wantRec)

	// Every retry gets the response back byte for byte.
	for i := range 3 {
		env.clock.Advance(time.Minute)
		resp := env.claim(t, "order-1", 10*time.Second)
		if got := resp.GetOutcome(); got != keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED {
			t.Fatalf("retry %d: got outcome %v; want COMPLETED", i, got)
		}
		if resp.GetToken() != 0 {
			t.Errorf("retry %d: got token %d; want 0", i, resp.GetToken())
		}
		got := resp.GetRecord().GetResponse()
		if got.GetCode() != stored.GetCode() || !bytes.Equal(got.GetBody(), stored.GetBody()) || !proto.Equal(got, stored) {
			t.Errorf("retry %d: got response %v; want %v", i, got, stored)
		}
		checkRecord(t, resp.GetRecord(), wantRec)
	}

	// Complete is idempotent: the first response wins.
	again := env.complete(t, "order-1", token, &keystorev1.Response{Code: 500, Body: []byte("other")})
	checkRecord(t, again, wantRec)
}

func TestCompleteRetention(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	token := env.acquire(t, "order-1", 10*time.Second)
	env.clock.Advance(time.Second)
	resp, err := env.client.Complete(ctxT(t), &keystorev1.CompleteRequest{
		Namespace: ns, Key: "order-1", Token: token, Retention: durationpb.New(time.Hour),
	})
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if got, want := resp.GetRecord().GetExpiresAt().AsTime(), t0.Add(time.Second+time.Hour); !got.Equal(want) {
		t.Errorf("got expires_at %v; want %v", got, want)
	}
	// No response given: an empty one is stored, so replays still carry one.
	if resp.GetRecord().GetResponse() == nil {
		t.Errorf("got no response in the completed record; want an empty response")
	}
}

func TestFingerprintMismatch(t *testing.T) {
	for _, tc := range []struct {
		name     string
		complete bool
	}{
		{"in progress", false},
		{"completed", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, api.Config{}, false)
			first, err := env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Fingerprint: []byte("aaa")})
			if err != nil {
				t.Fatalf("Claim: %v", err)
			}
			if tc.complete {
				env.complete(t, "k", first.GetToken(), &keystorev1.Response{Code: 200})
			}
			before, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"})
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			_, err = env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Fingerprint: []byte("bbb")})
			checkStatus(t, err, codes.FailedPrecondition, api.ReasonFingerprintMismatch)

			// Nothing changed, even after the lease has ended.
			env.clock.Advance(time.Minute)
			_, err = env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Fingerprint: []byte("bbb")})
			checkStatus(t, err, codes.FailedPrecondition, api.ReasonFingerprintMismatch)
			after, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"})
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			checkRecord(t, after.GetRecord(), before.GetRecord())

			// An empty fingerprint does not check.
			if _, err := env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: ns, Key: "k"}); err != nil {
				t.Errorf("Claim without fingerprint: got %v; want no error", err)
			}
		})
	}
}

func TestWriteRefusals(t *testing.T) {
	type setup struct {
		env   *testEnv
		token uint64
	}
	for _, tc := range []struct {
		name     string
		complete bool // complete the claim before the call
		call     func(ctx context.Context, s setup) error
		code     codes.Code
		reason   string
	}{
		{
			name: "complete with wrong token",
			call: func(ctx context.Context, s setup) error {
				_, err := s.env.client.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "k", Token: s.token + 1})
				return err
			},
			code: codes.Aborted, reason: api.ReasonClaimLost,
		},
		{
			name:     "complete completed with wrong token",
			complete: true,
			call: func(ctx context.Context, s setup) error {
				_, err := s.env.client.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "k", Token: s.token + 1})
				return err
			},
			code: codes.Aborted, reason: api.ReasonClaimLost,
		},
		{
			name: "complete without record",
			call: func(ctx context.Context, s setup) error {
				_, err := s.env.client.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "absent", Token: s.token})
				return err
			},
			code: codes.Aborted, reason: api.ReasonClaimLost,
		},
		{
			name: "release with wrong token",
			call: func(ctx context.Context, s setup) error {
				_, err := s.env.client.Release(ctx, &keystorev1.ReleaseRequest{Namespace: ns, Key: "k", Token: s.token + 1})
				return err
			},
			code: codes.Aborted, reason: api.ReasonClaimLost,
		},
		{
			name:     "release completed",
			complete: true,
			call: func(ctx context.Context, s setup) error {
				_, err := s.env.client.Release(ctx, &keystorev1.ReleaseRequest{Namespace: ns, Key: "k", Token: s.token})
				return err
			},
			code: codes.FailedPrecondition, reason: api.ReasonAlreadyCompleted,
		},
		{
			name:     "release completed with other token",
			complete: true,
			call: func(ctx context.Context, s setup) error {
				_, err := s.env.client.Release(ctx, &keystorev1.ReleaseRequest{Namespace: ns, Key: "k", Token: s.token + 1})
				return err
			},
			code: codes.FailedPrecondition, reason: api.ReasonAlreadyCompleted,
		},
		{
			name: "heartbeat with wrong token",
			call: func(ctx context.Context, s setup) error {
				_, err := s.env.client.Heartbeat(ctx, &keystorev1.HeartbeatRequest{Namespace: ns, Key: "k", Token: s.token + 1})
				return err
			},
			code: codes.Aborted, reason: api.ReasonClaimLost,
		},
		{
			name: "heartbeat without record",
			call: func(ctx context.Context, s setup) error {
				_, err := s.env.client.Heartbeat(ctx, &keystorev1.HeartbeatRequest{Namespace: ns, Key: "absent", Token: s.token})
				return err
			},
			code: codes.Aborted, reason: api.ReasonClaimLost,
		},
		{
			name:     "heartbeat completed",
			complete: true,
			call: func(ctx context.Context, s setup) error {
				_, err := s.env.client.Heartbeat(ctx, &keystorev1.HeartbeatRequest{Namespace: ns, Key: "k", Token: s.token})
				return err
			},
			code: codes.FailedPrecondition, reason: api.ReasonAlreadyCompleted,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, api.Config{}, false)
			token := env.acquire(t, "k", 10*time.Second)
			if tc.complete {
				env.complete(t, "k", token, &keystorev1.Response{Code: 200})
			}
			checkStatus(t, tc.call(ctxT(t), setup{env, token}), tc.code, tc.reason)
		})
	}
}

func TestReleaseThenClaim(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	old := env.acquire(t, "k", 10*time.Second)
	if _, err := env.client.Release(ctxT(t), &keystorev1.ReleaseRequest{Namespace: ns, Key: "k", Token: old}); err != nil {
		t.Fatalf("Release: %v", err)
	}
	_, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"})
	checkStatus(t, err, codes.NotFound, api.ReasonNotFound)

	resp := env.claim(t, "k", 10*time.Second)
	if resp.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || resp.GetToken() <= old {
		t.Fatalf("got outcome %v token %d; want ACQUIRED with a token above %d", resp.GetOutcome(), resp.GetToken(), old)
	}
	if got := resp.GetRecord().GetAttempt(); got != 1 {
		t.Errorf("got attempt %d; want 1 (a fresh record)", got)
	}
	// The released token is fenced off.
	_, err = env.client.Complete(ctxT(t), &keystorev1.CompleteRequest{Namespace: ns, Key: "k", Token: old})
	checkStatus(t, err, codes.Aborted, api.ReasonClaimLost)

	// Releasing an absent record is OK.
	if _, err := env.client.Release(ctxT(t), &keystorev1.ReleaseRequest{Namespace: ns, Key: "absent", Token: 1}); err != nil {
		t.Errorf("Release of an absent record: got %v; want OK", err)
	}
}

func TestHeartbeatExtendsLease(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	token := env.acquire(t, "k", 10*time.Second)
	for _, tc := range []struct {
		name      string
		at        time.Duration // log time of the Heartbeat, from t0
		lease     *durationpb.Duration
		wantLease time.Duration // from t0
	}{
		{"explicit lease", 5 * time.Second, durationpb.New(20 * time.Second), 25 * time.Second},
		{"default lease", 10 * time.Second, nil, 40 * time.Second},
		// A lapsed lease is revived while nobody has taken over.
		{"after lapse", time.Minute + 10*time.Second, durationpb.New(time.Second), 71 * time.Second},
		// The lease never outlives the record (24h retention).
		{"capped at expires_at", 24*time.Hour - 30*time.Minute, durationpb.New(time.Hour), 24 * time.Hour},
	} {
		env.clock.Set(t0.Add(tc.at))
		resp, err := env.client.Heartbeat(ctxT(t), &keystorev1.HeartbeatRequest{Namespace: ns, Key: "k", Token: token, Lease: tc.lease})
		if err != nil {
			t.Fatalf("%s: Heartbeat: %v", tc.name, err)
		}
		rec := resp.GetRecord()
		if got, want := rec.GetLeaseExpiresAt().AsTime(), t0.Add(tc.wantLease); !got.Equal(want) {
			t.Errorf("%s: got lease_expires_at %v; want %v", tc.name, got, want)
		}
		if rec.GetToken() != token || rec.GetState() != keystorev1.RecordState_RECORD_STATE_IN_PROGRESS || rec.GetAttempt() != 1 {
			t.Errorf("%s: got record %v; want the same IN_PROGRESS claim with token %d", tc.name, rec, token)
		}
		// Another caller sees the extended lease.
		if resp := env.claim(t, "k", time.Second); resp.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS {
			t.Errorf("%s: Claim by another caller: got outcome %v; want IN_PROGRESS", tc.name, resp.GetOutcome())
		}
	}
}

func TestTakeoverAfterLease(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	old := env.acquire(t, "k", 10*time.Second)
	env.clock.Advance(10 * time.Second)
	resp := env.claim(t, "k", 10*time.Second)
	if resp.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || resp.GetToken() <= old {
		t.Fatalf("got outcome %v token %d; want ACQUIRED with a token above %d", resp.GetOutcome(), resp.GetToken(), old)
	}
	if got := resp.GetRecord().GetAttempt(); got != 2 {
		t.Errorf("got attempt %d; want 2", got)
	}
	_, err := env.client.Heartbeat(ctxT(t), &keystorev1.HeartbeatRequest{Namespace: ns, Key: "k", Token: old})
	checkStatus(t, err, codes.Aborted, api.ReasonClaimLost)
	_, err = env.client.Complete(ctxT(t), &keystorev1.CompleteRequest{Namespace: ns, Key: "k", Token: old})
	checkStatus(t, err, codes.Aborted, api.ReasonClaimLost)
}

func TestGet(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	claimed := env.claim(t, "k", 10*time.Second)

	resp, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"})
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	checkRecord(t, resp.GetRecord(), withoutToken(claimed.GetRecord()))

	_, err = env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "unknown"})
	checkStatus(t, err, codes.NotFound, api.ReasonNotFound)
	// Namespaces never meet.
	_, err = env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: "other", Key: "k"})
	checkStatus(t, err, codes.NotFound, api.ReasonNotFound)
}

func TestExpiredRecord(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	first, err := env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Retention: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	env.complete(t, "k", first.GetToken(), &keystorev1.Response{Code: 200})
	// Log time moves only with entries: a write to another key carries it
	// past expires_at.
	env.clock.Advance(time.Minute)
	env.acquire(t, "other", time.Second)

	_, err = env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"})
	checkStatus(t, err, codes.NotFound, api.ReasonNotFound)
	resp := env.claim(t, "k", time.Second)
	if resp.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || resp.GetRecord().GetAttempt() != 1 {
		t.Errorf("Claim after expiry: got outcome %v attempt %d; want ACQUIRED attempt 1",
			resp.GetOutcome(), resp.GetRecord().GetAttempt())
	}
}

// On an idle cluster the last applied log time trails the current one; Get
// judges expiry at the current log time, as the next Claim would.
func TestGetJudgesExpiryAtCurrentLogTime(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	if _, err := env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Retention: durationpb.New(time.Minute)}); err != nil {
		t.Fatalf("Claim: %v", err)
	}
	env.clock.Advance(time.Minute - time.Nanosecond)
	if _, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"}); err != nil {
		t.Fatalf("Get 1ns before expires_at: %v", err)
	}
	env.clock.Advance(time.Nanosecond) // no entry applied since the claim
	_, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"})
	checkStatus(t, err, codes.NotFound, api.ReasonNotFound)
}

func TestGetConsistency(t *testing.T) {
	for _, tc := range []struct {
		consistency keystorev1.Consistency
		wantReads   int
	}{
		{keystorev1.Consistency_CONSISTENCY_UNSPECIFIED, 1},
		{keystorev1.Consistency_CONSISTENCY_LINEARIZABLE, 1},
		{keystorev1.Consistency_CONSISTENCY_STALE, 0},
	} {
		t.Run(tc.consistency.String(), func(t *testing.T) {
			env := newEnv(t, api.Config{}, false)
			env.acquire(t, "k", 10*time.Second)
			if _, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k", Consistency: tc.consistency}); err != nil {
				t.Fatalf("Get: %v", err)
			}
			if _, reads := env.repl.counts(); reads != tc.wantReads {
				t.Errorf("got %d ReadIndex calls; want %d", reads, tc.wantReads)
			}
			// A failing ReadIndex fails only the reads that need it.
			env.repl.set(func(f *fakeReplicator) { f.readErr = raftnode.ErrTimeout })
			_, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k", Consistency: tc.consistency})
			if tc.wantReads == 0 {
				if err != nil {
					t.Errorf("stale Get with ReadIndex failing: got %v; want the local record", err)
				}
			} else {
				checkStatus(t, err, codes.Unavailable, api.ReasonNoQuorum)
			}
		})
	}
}

func TestInvalidRequestsChangeNothing(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	token := env.acquire(t, "k", 10*time.Second)
	before, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k"})
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	proposals, reads := env.repl.counts()

	c := env.client
	for _, tc := range []struct {
		name       string
		call       func(ctx context.Context) error
		wantFields []string
	}{
		{"claim bad namespace", func(ctx context.Context) error {
			_, err := c.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "Payments", Key: "k"})
			return err
		}, []string{"namespace"}},
		{"claim several bad fields", func(ctx context.Context) error {
			_, err := c.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "k\n", Fingerprint: make([]byte, 65),
				Lease: durationpb.New(time.Hour + 1), Retention: durationpb.New(-time.Second), Wait: durationpb.New(2 * time.Hour),
				Owner: strings.Repeat("o", 257)})
			return err
		}, []string{"key", "fingerprint", "owner", "lease", "retention", "wait"}},
		{"claim retention over 30 days", func(ctx context.Context) error {
			_, err := c.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Retention: durationpb.New(30*24*time.Hour + 1)})
			return err
		}, []string{"retention"}},
		{"complete without token", func(ctx context.Context) error {
			_, err := c.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "k"})
			return err
		}, []string{"token"}},
		{"complete oversize body", func(ctx context.Context) error {
			_, err := c.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "k", Token: token,
				Response: &keystorev1.Response{Body: make([]byte, 1<<20+1)}})
			return err
		}, []string{"response.body"}},
		{"complete empty metadata key", func(ctx context.Context) error {
			_, err := c.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "k", Token: token,
				Response: &keystorev1.Response{Metadata: map[string]string{"": "v"}}})
			return err
		}, []string{"response.metadata"}},
		{"complete negative retention", func(ctx context.Context) error {
			_, err := c.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "k", Token: token, Retention: durationpb.New(-1)})
			return err
		}, []string{"retention"}},
		{"release empty key", func(ctx context.Context) error {
			_, err := c.Release(ctx, &keystorev1.ReleaseRequest{Namespace: ns, Token: token})
			return err
		}, []string{"key"}},
		{"heartbeat lease over max", func(ctx context.Context) error {
			_, err := c.Heartbeat(ctx, &keystorev1.HeartbeatRequest{Namespace: ns, Key: "k", Token: token, Lease: durationpb.New(time.Hour + 1)})
			return err
		}, []string{"lease"}},
		{"heartbeat invalid duration", func(ctx context.Context) error {
			_, err := c.Heartbeat(ctx, &keystorev1.HeartbeatRequest{Namespace: ns, Key: "k", Token: token,
				Lease: &durationpb.Duration{Seconds: 1, Nanos: 1_000_000_000}})
			return err
		}, []string{"lease"}},
		{"get unknown consistency", func(ctx context.Context) error {
			_, err := c.Get(ctx, &keystorev1.GetRequest{Namespace: ns, Key: "k", Consistency: 9})
			return err
		}, []string{"consistency"}},
		{"get long namespace", func(ctx context.Context) error {
			_, err := c.Get(ctx, &keystorev1.GetRequest{Namespace: strings.Repeat("a", 65), Key: "k"})
			return err
		}, []string{"namespace"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(ctxT(t))
			checkStatus(t, err, codes.InvalidArgument, api.ReasonInvalidArgument)
			var got []string
			for _, d := range status.Convert(err).Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, fv := range br.GetFieldViolations() {
						got = append(got, fv.GetField())
					}
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.wantFields, ",") {
				t.Errorf("got violations on %v; want %v", got, tc.wantFields)
			}
		})
	}
	if p, r := env.repl.counts(); p != proposals || r != reads {
		t.Errorf("got %d proposals and %d reads after invalid requests; want %d and %d", p, r, proposals, reads)
	}
	after, err := env.client.Get(ctxT(t), &keystorev1.GetRequest{Namespace: ns, Key: "k", Consistency: keystorev1.Consistency_CONSISTENCY_STALE})
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	checkRecord(t, after.GetRecord(), before.GetRecord())
}

func TestReplicatorErrors(t *testing.T) {
	calls := []struct {
		name string
		call func(ctx context.Context, c keystorev1.KeyStoreServiceClient) error
	}{
		{"claim", func(ctx context.Context, c keystorev1.KeyStoreServiceClient) error {
			_, err := c.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "k"})
			return err
		}},
		{"claim with wait", func(ctx context.Context, c keystorev1.KeyStoreServiceClient) error {
			_, err := c.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Wait: durationpb.New(time.Second)})
			return err
		}},
		{"complete", func(ctx context.Context, c keystorev1.KeyStoreServiceClient) error {
			_, err := c.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "k", Token: 1})
			return err
		}},
		{"release", func(ctx context.Context, c keystorev1.KeyStoreServiceClient) error {
			_, err := c.Release(ctx, &keystorev1.ReleaseRequest{Namespace: ns, Key: "k", Token: 1})
			return err
		}},
		{"heartbeat", func(ctx context.Context, c keystorev1.KeyStoreServiceClient) error {
			_, err := c.Heartbeat(ctx, &keystorev1.HeartbeatRequest{Namespace: ns, Key: "k", Token: 1})
			return err
		}},
		{"get", func(ctx context.Context, c keystorev1.KeyStoreServiceClient) error {
			_, err := c.Get(ctx, &keystorev1.GetRequest{Namespace: ns, Key: "k"})
			return err
		}},
	}
	for _, tc := range []struct {
		name   string
		err    error
		code   codes.Code
		reason string
	}{
		{"timeout", raftnode.ErrTimeout, codes.Unavailable, api.ReasonNoQuorum},
		{"stopped", raftnode.ErrStopped, codes.Unavailable, api.ReasonNoQuorum},
		{"unknown", errors.New("disk on fire at /secret/path"), codes.Internal, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, api.Config{}, false)
			env.repl.set(func(f *fakeReplicator) { f.proposeErr, f.readErr = tc.err, tc.err })
			for _, c := range calls {
				err := c.call(ctxT(t), env.client)
				checkStatus(t, err, tc.code, tc.reason)
				if msg := status.Convert(err).Message(); strings.Contains(msg, "secret") {
					t.Errorf("%s: got message %q; want no internal error text", c.name, msg)
				}
			}
		})
	}
}

// TestNoQuorumBeforeDeadline checks that a replicator that never answers
// yields UNAVAILABLE from the server, bounded by RequestTimeout or by the
// caller's deadline, never the caller's own DEADLINE_EXCEEDED.
func TestNoQuorumBeforeDeadline(t *testing.T) {
	for _, tc := range []struct {
		name           string
		requestTimeout time.Duration
		callerDeadline time.Duration
	}{
		{"request timeout first", 100 * time.Millisecond, 5 * time.Second},
		{"caller deadline first", 5 * time.Second, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, api.Config{RequestTimeout: tc.requestTimeout}, false)
			env.repl.set(func(f *fakeReplicator) { f.block = true })
			ctx, cancel := context.WithTimeout(context.Background(), tc.callerDeadline)
			defer cancel()
			_, err := env.client.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "k"})
			checkStatus(t, err, codes.Unavailable, api.ReasonNoQuorum)
			ctx, cancel = context.WithTimeout(context.Background(), tc.callerDeadline)
			defer cancel()
			_, err = env.client.Get(ctx, &keystorev1.GetRequest{Namespace: ns, Key: "k"})
			checkStatus(t, err, codes.Unavailable, api.ReasonNoQuorum)
		})
	}
}

// TestCallerCancel calls the service directly: over gRPC the client
// reports its own cancellation whatever the server answers.
func TestCallerCancel(t *testing.T) {
	env := newEnv(t, api.Config{}, false)
	env.repl.set(func(f *fakeReplicator) { f.block = true })
	for _, tc := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"claim", func(ctx context.Context) error {
			_, err := env.svc.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "k"})
			return err
		}},
		{"get", func(ctx context.Context) error {
			_, err := env.svc.Get(ctx, &keystorev1.GetRequest{Namespace: ns, Key: "k"})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			time.AfterFunc(50*time.Millisecond, cancel)
			checkStatus(t, tc.call(ctx), codes.Canceled, "")
		})
	}
	// A waiting Claim stops waiting when its caller goes away.
	env.repl.set(func(f *fakeReplicator) { f.block = false })
	env.acquire(t, "held", time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := env.svc.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "held", Wait: durationpb.New(5 * time.Second)})
	checkStatus(t, err, codes.Canceled, "")
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("canceled waiting Claim took %v; want it to return promptly", elapsed)
	}
}

func TestClaimWaitWakesOnChange(t *testing.T) {
	for _, tc := range []struct {
		name        string
		act         func(ctx context.Context, env *testEnv, token uint64) error
		wantOutcome keystorev1.ClaimOutcome
	}{
		{
			name: "complete",
			act: func(ctx context.Context, env *testEnv, token uint64) error {
				_, err := env.client.Complete(ctx, &keystorev1.CompleteRequest{Namespace: ns, Key: "k", Token: token,
					Response: &keystorev1.Response{Code: 200, Body: []byte("done")}})
				return err
			},
			wantOutcome: keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED,
		},
		{
			name: "release",
			act: func(ctx context.Context, env *testEnv, token uint64) error {
				_, err := env.client.Release(ctx, &keystorev1.ReleaseRequest{Namespace: ns, Key: "k", Token: token})
				return err
			},
			wantOutcome: keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, api.Config{}, true)
			token := env.acquire(t, "k", time.Minute)

			ctx := ctxT(t)
			actErr := make(chan error, 1)
			go func() {
				time.Sleep(200 * time.Millisecond)
				actErr <- tc.act(ctx, env, token)
			}()
			start := time.Now()
			resp, err := env.client.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Wait: durationpb.New(5 * time.Second)})
			elapsed := time.Since(start)
			if err := <-actErr; err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if err != nil {
				t.Fatalf("waiting Claim: %v", err)
			}
			if resp.GetOutcome() != tc.wantOutcome {
				t.Errorf("got outcome %v; want %v", resp.GetOutcome(), tc.wantOutcome)
			}
			if elapsed < 150*time.Millisecond || elapsed > 2*time.Second {
				t.Errorf("waiting Claim took %v; want about 200ms (woken by the change)", elapsed)
			}
			// acquire, first waiting proposal, the change, the proposal on
			// wake-up: no polling in between.
			if p, _ := env.repl.counts(); p > 4 {
				t.Errorf("got %d proposals; want at most 4 (the waiter must not poll)", p)
			}
		})
	}
}

func TestClaimWaitTakesOverAfterLease(t *testing.T) {
	env := newEnv(t, api.Config{}, true)
	first := env.claim(t, "k", 300*time.Millisecond)
	start := time.Now()
	resp, err := env.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Wait: durationpb.New(5 * time.Second)})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("waiting Claim: %v", err)
	}
	if resp.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || resp.GetToken() <= first.GetToken() {
		t.Fatalf("got outcome %v token %d; want ACQUIRED with a token above %d", resp.GetOutcome(), resp.GetToken(), first.GetToken())
	}
	if got := resp.GetRecord().GetAttempt(); got != 2 {
		t.Errorf("got attempt %d; want 2 (a takeover)", got)
	}
	if !resp.GetRecord().GetCreatedAt().AsTime().Equal(first.GetRecord().GetCreatedAt().AsTime()) {
		t.Errorf("got created_at %v; want the original %v", resp.GetRecord().GetCreatedAt(), first.GetRecord().GetCreatedAt())
	}
	if elapsed < 200*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("waiting Claim took %v; want about 300ms (the lease)", elapsed)
	}
	if p, _ := env.repl.counts(); p > 6 {
		t.Errorf("got %d proposals; want a handful (the waiter must sleep until the lease ends)", p)
	}
}

func TestClaimWaitEndsInProgress(t *testing.T) {
	for _, tc := range []struct {
		name           string
		wait           time.Duration
		callerDeadline time.Duration
		wantAbout      time.Duration
	}{
		{"wait passes", 300 * time.Millisecond, 10 * time.Second, 300 * time.Millisecond},
		// The server answers before the caller's deadline rather than fail,
		// 10% (at most 250ms) ahead of it.
		{"caller deadline first", 5 * time.Second, 2 * time.Second, 1800 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, api.Config{}, true)
			first := env.claim(t, "k", time.Hour)
			ctx, cancel := context.WithTimeout(context.Background(), tc.callerDeadline)
			defer cancel()
			start := time.Now()
			resp, err := env.client.Claim(ctx, &keystorev1.ClaimRequest{Namespace: ns, Key: "k", Wait: durationpb.New(tc.wait)})
			elapsed := time.Since(start)
			if err != nil {
				t.Fatalf("waiting Claim: got %v; want IN_PROGRESS", err)
			}
			if resp.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS {
				t.Fatalf("got outcome %v; want IN_PROGRESS", resp.GetOutcome())
			}
			checkRecord(t, resp.GetRecord(), withoutToken(first.GetRecord()))
			if elapsed < tc.wantAbout-100*time.Millisecond || elapsed > tc.wantAbout+time.Second {
				t.Errorf("waiting Claim took %v; want about %v", elapsed, tc.wantAbout)
			}
			if p, _ := env.repl.counts(); p > 3 {
				t.Errorf("got %d proposals; want at most 3 (the waiter must not poll)", p)
			}
		})
	}
}

func TestNewServiceRejectsLeaseAboveContract(t *testing.T) {
	// config.go: "configuration may lower the maxima, not raise them past
	// these"; docs/contract.md fixes the lease maximum at 1h.
	if _, err := api.NewService(api.Config{MaxLease: 2 * time.Hour}, &fakeReplicator{}, nil); err == nil {
		t.Errorf("NewService(MaxLease 2h): got nil error; want a configuration error")
	}
}

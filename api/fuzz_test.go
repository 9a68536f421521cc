package api

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/rules"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// validationRecorder is the Replicator and Store of the validation fuzz
// target: it answers every proposal as an acquired claim and every read as
// an absent record, and records what reached it, so the target can tell an
// accepted request from a refused one and see what was proposed.
type validationRecorder struct {
	mu       sync.Mutex
	proposed [][]byte
	reads    int
	gets     [][2]string
}

func (r *validationRecorder) Propose(_ context.Context, _ uint64, command []byte) (*statev1.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.proposed = append(r.proposed, command)
	return &statev1.Result{Outcome: statev1.Outcome_OUTCOME_ACQUIRED, Record: &statev1.Record{State: statev1.State_STATE_IN_PROGRESS, Token: 7}}, nil
}

func (r *validationRecorder) ReadIndex(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads++
	return nil
}

func (r *validationRecorder) Get(namespace, key string) (*statev1.Record, int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gets = append(r.gets, [2]string{namespace, key})
	return nil, 0, rules.ErrNotFound
}

func (r *validationRecorder) Watch(string, string) (<-chan struct{}, func()) {
	return make(chan struct{}), func() {}
}

// take returns what reached the recorder since the last take.
func (r *validationRecorder) take() (proposed [][]byte, reads int, gets [][2]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	proposed, reads, gets = r.proposed, r.reads, r.gets
	r.proposed, r.reads, r.gets = nil, 0, nil
	return proposed, reads, gets
}

// validationService is a service under test with the limits its checks
// hold it to.
type validationService struct {
	name string
	svc  *service
	rec  *validationRecorder
	cfg  Config // with defaults
}

// validationServices returns a service with the default configuration,
// held to the contract's limits, and one with every limit lowered, so
// that the fuzzer reaches the size limits with small inputs.
func validationServices(tb testing.TB) []*validationService {
	tb.Helper()
	var out []*validationService
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"default", Config{}},
		{"tight", Config{
			DefaultLease: 2 * time.Second, MaxLease: 5 * time.Second,
			DefaultRetention: 10 * time.Second, MaxRetention: time.Minute,
			MaxWait: 3 * time.Second, MaxBodyBytes: 8, MaxMetadataBytes: 8,
		}},
	} {
		rec := &validationRecorder{}
		svc, err := NewService(c.cfg, rec, rec)
		if err != nil {
			tb.Fatalf("NewService(%s): %v", c.name, err)
		}
		out = append(out, &validationService{name: c.name, svc: svc.(*service), rec: rec, cfg: c.cfg.WithDefaults()})
	}
	// The default service answers to the contract (docs/contract.md,
	// Limits and defaults), not merely to its own configuration.
	d := out[0].cfg
	if d.MaxLease != time.Hour || d.DefaultLease != 30*time.Second || d.MaxRetention != 30*24*time.Hour ||
		d.DefaultRetention != 24*time.Hour || d.MaxWait != time.Hour || d.MaxBodyBytes != 1<<20 || d.MaxMetadataBytes != 64<<10 {
		tb.Fatalf("Config defaults %+v differ from docs/contract.md's", d)
	}
	return out
}

// The request kinds the selector byte picks from.
const (
	kindClaim = iota
	kindComplete
	kindRelease
	kindHeartbeat
	kindGet
	numKinds
)

// contractViolations returns the fields of req that break the rules of
// docs/contract.md (Limits and defaults) under cfg's limits, written out
// from the contract rather than from validate.go.
func contractViolations(req proto.Message, cfg Config) map[string]bool {
	bad := map[string]bool{}
	checkNamespace := func(ns string) {
		if len(ns) < 1 || len(ns) > 64 || strings.TrimLeft(ns, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
			bad["namespace"] = true
		}
	}
	checkKey := func(k string) {
		if len(k) < 1 || len(k) > 255 || !utf8.ValidString(k) || strings.IndexFunc(k, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
			bad["key"] = true
		}
	}
	checkToken := func(tok uint64) {
		if tok == 0 {
			bad["token"] = true
		}
	}
	// A duration absent or zero means the default; otherwise it must be
	// valid, at most max, and positive (or, allowZero, not negative).
	checkDuration := func(field string, d *durationpb.Duration, max time.Duration, allowZero bool) {
		if d == nil || d.Seconds == 0 && d.Nanos == 0 {
			return
		}
		if d.CheckValid() != nil {
			bad[field] = true
			return
		}
		v := d.AsDuration()
		if v > max || v < 0 || v == 0 && !allowZero {
			bad[field] = true
		}
	}
	switch r := req.(type) {
	case *keystorev1.ClaimRequest:
		checkNamespace(r.GetNamespace())
		checkKey(r.GetKey())
		if len(r.GetFingerprint()) > 64 {
			bad["fingerprint"] = true
		}
		if len(r.GetOwner()) > 256 {
			bad["owner"] = true
		}
		checkDuration("lease", r.GetLease(), cfg.MaxLease, false)
		checkDuration("retention", r.GetRetention(), cfg.MaxRetention, false)
		checkDuration("wait", r.GetWait(), cfg.MaxWait, true)
	case *keystorev1.CompleteRequest:
		checkNamespace(r.GetNamespace())
		checkKey(r.GetKey())
		checkToken(r.GetToken())
		if len(r.GetResponse().GetBody()) > cfg.MaxBodyBytes {
			bad["response.body"] = true
		}
		size := 0
		for k, v := range r.GetResponse().GetMetadata() {
			if k == "" {
				bad["response.metadata"] = true
			}
			size += len(k) + len(v)
		}
		if size > cfg.MaxMetadataBytes {
			bad["response.metadata"] = true
		}
		checkDuration("retention", r.GetRetention(), cfg.MaxRetention, false)
	case *keystorev1.ReleaseRequest:
		checkNamespace(r.GetNamespace())
		checkKey(r.GetKey())
		checkToken(r.GetToken())
	case *keystorev1.HeartbeatRequest:
		checkNamespace(r.GetNamespace())
		checkKey(r.GetKey())
		checkToken(r.GetToken())
		checkDuration("lease", r.GetLease(), cfg.MaxLease, false)
	case *keystorev1.GetRequest:
		checkNamespace(r.GetNamespace())
		checkKey(r.GetKey())
		if _, ok := keystorev1.Consistency_name[int32(r.GetConsistency())]; !ok {
			bad["consistency"] = true
		}
	}
	return bad
}

// resolvedDuration is the duration the contract says a request means: the
// default when absent or zero.
func resolvedDuration(d *durationpb.Duration, def time.Duration) int64 {
	if d == nil || d.Seconds == 0 && d.Nanos == 0 {
		return int64(def)
	}
	return int64(d.AsDuration())
}

// call runs req through the handler of its kind.
func (vs *validationService) call(req proto.Message) error {
	ctx := context.Background()
	var err error
	switch r := req.(type) {
	case *keystorev1.ClaimRequest:
		_, err = vs.svc.Claim(ctx, r)
	case *keystorev1.CompleteRequest:
		_, err = vs.svc.Complete(ctx, r)
	case *keystorev1.ReleaseRequest:
		_, err = vs.svc.Release(ctx, r)
	case *keystorev1.HeartbeatRequest:
		_, err = vs.svc.Heartbeat(ctx, r)
	case *keystorev1.GetRequest:
		_, err = vs.svc.Get(ctx, r)
	}
	return err
}

// checkRefusal checks that err is INVALID_ARGUMENT with an ErrorInfo and a
// BadRequest naming exactly the fields in want.
func checkRefusal(t *testing.T, name string, err error, want map[string]bool) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("%s service: refused with %v; want INVALID_ARGUMENT", name, err)
	}
	var (
		info *errdetails.ErrorInfo
		br   *errdetails.BadRequest
	)
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.BadRequest:
			br = d
		}
	}
	if info.GetReason() != ReasonInvalidArgument || info.GetDomain() != ErrorDomain {
		t.Fatalf("%s service: refused with ErrorInfo %v; want reason %s in domain %s", name, info, ReasonInvalidArgument, ErrorDomain)
	}
	if len(br.GetFieldViolations()) == 0 {
		t.Fatalf("%s service: refused with %v and no BadRequest field violations", name, err)
	}
	got := map[string]bool{}
	for _, fv := range br.GetFieldViolations() {
		if fv.GetDescription() == "" {
			t.Fatalf("%s service: violation of %q has no description", name, fv.GetField())
		}
		got[fv.GetField()] = true
	}
	if !maps.Equal(got, want) {
		t.Fatalf("%s service: refused naming fields %v; want %v (%v)", name, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)), err)
	}
}

// checkProposed checks the one command an accepted write proposed: the
// request's fields, copied, with its durations resolved.
func checkProposed(t *testing.T, name string, req proto.Message, cfg Config, proposed [][]byte) {
	t.Helper()
	if len(proposed) != 1 {
		t.Fatalf("%s service: accepted: proposed %d commands; want 1", name, len(proposed))
	}
	cmd := &statev1.Command{}
	if err := proto.Unmarshal(proposed[0], cmd); err != nil {
		t.Fatalf("%s service: proposed an undecodable command: %v", name, err)
	}
	var want *statev1.Command
	switch r := req.(type) {
	case *keystorev1.ClaimRequest:
		want = &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
			Namespace: r.GetNamespace(), Key: r.GetKey(), Fingerprint: r.GetFingerprint(), Owner: r.GetOwner(),
			Lease:     resolvedDuration(r.GetLease(), cfg.DefaultLease),
			Retention: resolvedDuration(r.GetRetention(), cfg.DefaultRetention),
		}}}
	case *keystorev1.CompleteRequest:
		resp := &statev1.Response{Code: r.GetResponse().GetCode(), Metadata: r.GetResponse().GetMetadata(), Body: r.GetResponse().GetBody()}
		want = &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
			Namespace: r.GetNamespace(), Key: r.GetKey(), Token: r.GetToken(), Response: resp,
			Retention: resolvedDuration(r.GetRetention(), 0),
		}}}
	case *keystorev1.ReleaseRequest:
		want = &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{
			Namespace: r.GetNamespace(), Key: r.GetKey(), Token: r.GetToken(),
		}}}
	case *keystorev1.HeartbeatRequest:
		want = &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{
			Namespace: r.GetNamespace(), Key: r.GetKey(), Token: r.GetToken(),
			Lease: resolvedDuration(r.GetLease(), cfg.DefaultLease),
		}}}
	}
	if !proto.Equal(cmd, want) {
		t.Fatalf("%s service: proposed %v; want %v", name, cmd, want)
	}
}

// validationSeeds returns requests of every kind: valid ones, ones at the
// limits (default and tight) and ones just past them.
func validationSeeds() []struct {
	kind uint8
	req  proto.Message
} {
	d := durationpb.New
	longKey := strings.Repeat("k", 255)
	longNS := strings.Repeat("n", 64)
	type seed = struct {
		kind uint8
		req  proto.Message
	}
	return []seed{
		{kindClaim, &keystorev1.ClaimRequest{Namespace: "payments", Key: "order-1"}},
		{kindClaim, &keystorev1.ClaimRequest{Namespace: longNS, Key: longKey, Fingerprint: make([]byte, 64), Owner: strings.Repeat("o", 256),
			Lease: d(time.Hour), Retention: d(30 * 24 * time.Hour), Wait: d(time.Hour), RequestId: 9}},
		{kindClaim, &keystorev1.ClaimRequest{Namespace: longNS + "n", Key: longKey + "k", Fingerprint: make([]byte, 65), Owner: strings.Repeat("o", 257),
			Lease: d(time.Hour + 1), Retention: d(-time.Second), Wait: &durationpb.Duration{Seconds: 1, Nanos: -1}}},
		{kindClaim, &keystorev1.ClaimRequest{Namespace: "a.b_c-9", Key: "ключ\u00a0", Lease: d(5 * time.Second), Wait: d(3 * time.Second)}},
		{kindClaim, &keystorev1.ClaimRequest{Namespace: "Pay", Key: "k\x7f", Lease: &durationpb.Duration{Nanos: 1}}},
		{kindComplete, &keystorev1.CompleteRequest{Namespace: "payments", Key: "order-1", Token: 3,
			Response: &keystorev1.Response{Code: 200, Body: []byte("12345678"), Metadata: map[string]string{"a": "1234567"}}}},
		{kindComplete, &keystorev1.CompleteRequest{Namespace: "payments", Key: "order-1", Token: 3, Retention: d(time.Minute),
			Response: &keystorev1.Response{Body: []byte("123456789"), Metadata: map[string]string{"": "", "ab": "1234567"}}}},
		{kindComplete, &keystorev1.CompleteRequest{Namespace: "payments", Key: "order-1"}},
		{kindRelease, &keystorev1.ReleaseRequest{Namespace: "payments", Key: "order-1", Token: 3}},
		{kindRelease, &keystorev1.ReleaseRequest{Namespace: "", Key: "order-1"}},
		{kindHeartbeat, &keystorev1.HeartbeatRequest{Namespace: "payments", Key: "order-1", Token: 3, Lease: d(time.Hour)}},
		{kindHeartbeat, &keystorev1.HeartbeatRequest{Namespace: "payments", Key: " ", Token: 3, Lease: &durationpb.Duration{Seconds: 315_576_000_001}}},
		{kindGet, &keystorev1.GetRequest{Namespace: "payments", Key: "order-1", Consistency: keystorev1.Consistency_CONSISTENCY_STALE}},
		{kindGet, &keystorev1.GetRequest{Namespace: "payments", Key: "order-1", Consistency: 7}},
	}
}

// FuzzRequestValidation: any request bytes that decode as one of
// KeyStoreService's requests (the selector picks which) are either
// refused, with INVALID_ARGUMENT whose BadRequest names exactly the fields
// that break docs/contract.md's limits, without reaching the replicator or
// the store, or accepted, only when every field is within the limits, and
// then the command proposed carries the request's fields with its
// durations resolved (a Get reads the key asked for, through ReadIndex
// unless STALE). It runs each input against the default configuration
// (held to the contract's limits) and one with every limit lowered.
func FuzzRequestValidation(f *testing.F) {
	for _, s := range validationSeeds() {
		b, err := proto.Marshal(s.req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s.kind, b)
	}
	services := validationServices(f)
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		var req proto.Message
		switch kind % numKinds {
		case kindClaim:
			req = &keystorev1.ClaimRequest{}
		case kindComplete:
			req = &keystorev1.CompleteRequest{}
		case kindRelease:
			req = &keystorev1.ReleaseRequest{}
		case kindHeartbeat:
			req = &keystorev1.HeartbeatRequest{}
		case kindGet:
			req = &keystorev1.GetRequest{}
		}
		if proto.Unmarshal(data, req) != nil {
			return // gRPC refuses undecodable bytes before the service
		}
		for _, vs := range services {
			checkValidation(t, vs, req)
		}
	})
}

// checkValidation runs req through vs and checks the outcome against the
// contract's limits under vs's configuration.
func checkValidation(t *testing.T, vs *validationService, req proto.Message) {
	t.Helper()
	vs.rec.take()
	err := vs.call(req)
	proposed, reads, gets := vs.rec.take()
	want := contractViolations(req, vs.cfg)
	reached := len(proposed) > 0 || reads > 0 || len(gets) > 0
	if len(want) > 0 {
		if reached {
			t.Fatalf("%s service: request %v breaks the limits on %v, but reached the replicator or store (err %v)",
				vs.name, req, slices.Sorted(maps.Keys(want)), err)
		}
		checkRefusal(t, vs.name, err, want)
		return
	}
	if g, ok := req.(*keystorev1.GetRequest); ok {
		if status.Code(err) != codes.NotFound {
			t.Fatalf("%s service: Get %v: %v; want NOT_FOUND from the store", vs.name, g, err)
		}
		wantReads := 1
		if g.GetConsistency() == keystorev1.Consistency_CONSISTENCY_STALE {
			wantReads = 0
		}
		if reads != wantReads || len(gets) != 1 || gets[0] != [2]string{g.GetNamespace(), g.GetKey()} {
			t.Fatalf("%s service: Get %v: %d ReadIndex, store reads %q; want %d ReadIndex and one read of the key", vs.name, g, reads, gets, wantReads)
		}
		return
	}
	if err != nil {
		t.Fatalf("%s service: request %T %v is within the limits; refused with %v", vs.name, req, req, err)
	}
	checkProposed(t, vs.name, req, vs.cfg, proposed)
}

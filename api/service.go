package api

import (
	"context"
	"errors"
	"github.com/keystore-dev/keystore/rules"
	"log/slog"
	"time"

	"github.com/keystore-dev/keystore/internal/bugs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/protobuf/proto"
)

// Replicator replicates commands through the log and confirms reads.
type Replicator interface {
	// Propose returns the apply result of command once it is committed and
	// applied (the caller must not modify it). requestID identifies one logical request across retries; 0
	// asks for a fresh one.
	Propose(ctx context.Context, requestID uint64, command []byte) (*statev1.Result, error)
	// ReadIndex returns once the local state reflects every write
	// acknowledged before the call.
	ReadIndex(ctx context.Context) error
}

// Store reads the local replica.
type Store interface {
	// Get returns the live record, or rules.ErrNotFound.
	Get(namespace, key string) (*statev1.Record, int64, error)
	// Watch fires the next time the record changes.
	Watch(namespace, key string) (<-chan struct{}, func())
}

type service struct {
	keystorev1.UnimplementedKeyStoreServiceServer
	cfg    Config
	repl   Replicator
	store  Store
	logger *slog.Logger
	// recent holds the keys this node lately claimed or completed: the
	// Claims worth answering by a read (claimByRead).
	recent *recentKeys
	limits *limiter
}

// recentKeysSize bounds recentKeys: retries mostly come within seconds of
// the first attempt.
const recentKeysSize = 1 << 16

// NewService returns the KeyStoreService over repl and store.
func NewService(cfg Config, repl Replicator, store Store) (keystorev1.KeyStoreServiceServer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if cfg.Access == nil {
		cfg.Access = openAccess{}
	}
	return &service{cfg: cfg, repl: repl, store: store, logger: cfg.Logger.With("component", "api"), recent: newRecentKeys(recentKeysSize), limits: newLimiter(cfg)}, nil
}

// Claim implements docs/contract.md's Claim, including wait: the call blocks on
// the record's apply notifications (and a timer at its lease end), never by
// polling, then answers as of that moment.
func (s *service) Claim(ctx context.Context, req *keystorev1.ClaimRequest) (*keystorev1.ClaimResponse, error) {
	return s.claim(ctx, deadlineOf(ctx), req)
}

// claim is Claim answered by the deadline by (batchOps): its waits end a
// little before.
func (s *service) claim(ctx context.Context, by deadline, req *keystorev1.ClaimRequest) (*keystorev1.ClaimResponse, error) {
	start := time.Now()
	resp, err := s.claimOp(ctx, by, req)
	s.cfg.Metrics.timed("claim", start, err)
	s.cfg.Metrics.claimed(req.GetNamespace(), resp, err)
	if req.GetWait().AsDuration() > 0 && err == nil {
		s.cfg.Metrics.waited(req.GetNamespace(), time.Since(start))
	}
	return resp, err
}

func (s *service) claimOp(ctx context.Context, by deadline, req *keystorev1.ClaimRequest) (*keystorev1.ClaimResponse, error) {
	if err := s.cfg.Access.CheckNamespace(ctx, req.GetNamespace()); err != nil {
		return nil, err
	}
	if err := s.limits.admit(req.GetNamespace()); err != nil {
		return nil, err
	}
	var v validator
	v.namespace(req.GetNamespace())
	v.key(req.GetKey())
	v.fingerprint(req.GetFingerprint())
	v.owner(req.GetOwner())
	lease := v.duration("lease", req.GetLease(), s.cfg.DefaultLease, s.cfg.MaxLease)
	retention := v.duration("retention", req.GetRetention(), s.cfg.DefaultRetention, s.cfg.MaxRetention)
	wait := v.duration("wait", req.GetWait(), 0, s.cfg.MaxWait)
	if err := v.err(); err != nil {
		return nil, err
	}
	ns, key := req.GetNamespace(), req.GetKey()
	if err := s.checkRecordQuota(ns, key); err != nil {
		return nil, err
	}
	if wait > 0 {
		done, err := s.limits.startWaiting(ns)
		if err != nil {
			return nil, err
		}
		defer done()
	}
	claim := &statev1.Claim{
		Namespace:   ns,
		Key:         key,
		Fingerprint: req.GetFingerprint(),
		Lease:       int64(lease),
		Retention:   int64(retention),
		Owner:       req.GetOwner(),
	}
	cmd := mustMarshal(&statev1.Command{Op: &statev1.Command_Claim{Claim: claim}})

	waitUntil := time.Now().Add(wait)
	if by.ok {
		// Answer IN_PROGRESS before the caller's deadline rather than fail.
		waitUntil = earliest(waitUntil, by.t.Add(-margin(time.Until(by.t))))
	}
	slack := 5 * time.Millisecond
	recent := recentKey(ns, key)
	for {
		var changed <-chan struct{}
		cancel := func() {}
		if wait > 0 {
			// Subscribe before proposing so no change is missed.
			changed, cancel = s.store.Watch(ns, key)
		}
		res, ok, err := s.claimByRead(ctx, by, req.GetRequestId(), claim, recent)
		if err == nil && !ok {
			res, err = s.propose(ctx, by, req.GetRequestId(), cmd)
		}
		if err != nil {
			cancel()
			return nil, err
		}
		s.recent.add(recent)
		if res.GetOutcome() != statev1.Outcome_OUTCOME_IN_PROGRESS || !time.Now().Before(waitUntil) {
			cancel()
			return claimResponse(ns, key, res), nil
		}
		// Wake when the record changes, when its lease should have ended
		// in log time, or when the wait is over.
		untilLeaseEnd := time.Duration(res.GetRecord().GetLeaseExpiresAt()-s.cfg.LogNow()) + slack
		timer := time.NewTimer(min(untilLeaseEnd, time.Until(waitUntil)))
		select {
		case <-changed:
		case <-timer.C:
			slack = min(2*slack, 250*time.Millisecond)
		case <-ctx.Done():
			timer.Stop()
			cancel()
			return nil, errorStatus(s.logger, ctx.Err())
		}
		timer.Stop()
		cancel()
	}
}

// claimByRead answers a Claim without a log write when the log would change
// nothing: a retry of a completed request (the common case) or of one in
// progress. Only the leader does it, after a ReadIndex round, judging at
// its own log time, which is what it would stamp on the Claim's entry: the
// answer is the one that entry would get, linearized at that moment. ok is
// false when the Claim must be proposed; a non-nil error is the caller's
// answer.
func (s *service) claimByRead(ctx context.Context, by deadline, requestID uint64, c *statev1.Claim, recent string) (res *statev1.Result, ok bool, err error) {
	if s.cfg.IsLeader == nil || !s.cfg.IsLeader() {
		return nil, false, nil
	}
	// A key this node has not seen lately is most likely new: the Claim
	// creates it, so it goes to the log without a read round first (and
	// without a storage lookup: that costs as much as the read saves).
	if !s.recent.has(recent) {
		return nil, false, nil
	}
	octx, cancel := s.opContext(ctx, by)
	err = s.repl.ReadIndex(octx)
	cancel()
	if err != nil {
		return nil, false, s.callError(ctx, err)
	}
	cur, _, err := s.store.Get(c.GetNamespace(), c.GetKey())
	if err != nil {
		return nil, false, nil
	}
	now := s.cfg.LogNow()
	if !s.cfg.IsLeader() {
		return nil, false, nil // now is an estimate, not this node's stamp
	}
	res, readOnly := rules.DecideClaim(cur, c, requestID, now)
	if !readOnly {
		return nil, false, nil
	}
	if err := rules.ResultError(res); err != nil {
		return nil, false, errorStatus(s.logger, err)
	}
	return res, true, nil
}

func claimResponse(ns, key string, res *statev1.Result) *keystorev1.ClaimResponse {
	out := &keystorev1.ClaimResponse{
		Outcome: toOutcome(res.GetOutcome()),
		Record:  toRecord(ns, key, res.GetRecord()),
	}
	if res.GetOutcome() == statev1.Outcome_OUTCOME_ACQUIRED {
		out.Token = res.GetRecord().GetToken()
	} else {
		// The live claim is another caller's.
		hideLiveToken(out.Record)
	}
	return out
}

// Complete implements docs/contract.md's Complete.
func (s *service) Complete(ctx context.Context, req *keystorev1.CompleteRequest) (*keystorev1.CompleteResponse, error) {
	return s.complete(ctx, deadlineOf(ctx), req)
}

// complete is Complete answered by the deadline by (batchOps).
func (s *service) complete(ctx context.Context, by deadline, req *keystorev1.CompleteRequest) (*keystorev1.CompleteResponse, error) {
	start := time.Now()
	resp, err := s.completeOp(ctx, by, req)
	s.cfg.Metrics.timed("complete", start, err)
	s.cfg.Metrics.done("complete", req.GetNamespace(), err)
	return resp, err
}

func (s *service) completeOp(ctx context.Context, by deadline, req *keystorev1.CompleteRequest) (*keystorev1.CompleteResponse, error) {
	if err := s.cfg.Access.CheckNamespace(ctx, req.GetNamespace()); err != nil {
		return nil, err
	}
	if err := s.limits.admit(req.GetNamespace()); err != nil {
		return nil, err
	}
	var v validator
	v.namespace(req.GetNamespace())
	v.key(req.GetKey())
	v.token(req.GetToken())
	v.response(req.GetResponse(), s.cfg.MaxBodyBytes, s.cfg.MaxMetadataBytes)
	retention := v.duration("retention", req.GetRetention(), 0, s.cfg.MaxRetention)
	if err := v.err(); err != nil {
		return nil, err
	}
	if err := s.checkBytesQuota(req.GetNamespace(), proto.Size(req.GetResponse())); err != nil {
		return nil, err
	}
	res, err := s.propose(ctx, by, 0, mustMarshal(&statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
		Namespace: req.GetNamespace(),
		Key:       req.GetKey(),
		Token:     req.GetToken(),
		Response:  fromResponse(req.GetResponse()),
		Retention: int64(retention),
	}}}))
	if err != nil {
		return nil, err
	}
	s.recent.add(recentKey(req.GetNamespace(), req.GetKey()))
	return &keystorev1.CompleteResponse{Record: toRecord(req.GetNamespace(), req.GetKey(), res.GetRecord())}, nil
}

// Release implements docs/contract.md's Release.
func (s *service) Release(ctx context.Context, req *keystorev1.ReleaseRequest) (*keystorev1.ReleaseResponse, error) {
	return s.release(ctx, deadlineOf(ctx), req)
}

// release is Release answered by the deadline by (batchOps).
func (s *service) release(ctx context.Context, by deadline, req *keystorev1.ReleaseRequest) (*keystorev1.ReleaseResponse, error) {
	start := time.Now()
	resp, err := s.releaseOp(ctx, by, req)
	s.cfg.Metrics.timed("release", start, err)
	s.cfg.Metrics.done("release", req.GetNamespace(), err)
	return resp, err
}

func (s *service) releaseOp(ctx context.Context, by deadline, req *keystorev1.ReleaseRequest) (*keystorev1.ReleaseResponse, error) {
	if err := s.cfg.Access.CheckNamespace(ctx, req.GetNamespace()); err != nil {
		return nil, err
	}
	if err := s.limits.admit(req.GetNamespace()); err != nil {
		return nil, err
	}
	var v validator
	v.namespace(req.GetNamespace())
	v.key(req.GetKey())
	v.token(req.GetToken())
	if err := v.err(); err != nil {
		return nil, err
	}
	_, err := s.propose(ctx, by, 0, mustMarshal(&statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{
		Namespace: req.GetNamespace(),
		Key:       req.GetKey(),
		Token:     req.GetToken(),
	}}}))
	if err != nil {
		return nil, err
	}
	return &keystorev1.ReleaseResponse{}, nil
}

// Heartbeat implements docs/contract.md's Heartbeat.
func (s *service) Heartbeat(ctx context.Context, req *keystorev1.HeartbeatRequest) (*keystorev1.HeartbeatResponse, error) {
	return s.heartbeat(ctx, deadlineOf(ctx), req)
}

// heartbeat is Heartbeat answered by the deadline by (batchOps).
func (s *service) heartbeat(ctx context.Context, by deadline, req *keystorev1.HeartbeatRequest) (*keystorev1.HeartbeatResponse, error) {
	start := time.Now()
	resp, err := s.heartbeatOp(ctx, by, req)
	s.cfg.Metrics.timed("heartbeat", start, err)
	s.cfg.Metrics.done("heartbeat", req.GetNamespace(), err)
	return resp, err
}

func (s *service) heartbeatOp(ctx context.Context, by deadline, req *keystorev1.HeartbeatRequest) (*keystorev1.HeartbeatResponse, error) {
	if err := s.cfg.Access.CheckNamespace(ctx, req.GetNamespace()); err != nil {
		return nil, err
	}
	if err := s.limits.admit(req.GetNamespace()); err != nil {
		return nil, err
	}
	var v validator
	v.namespace(req.GetNamespace())
	v.key(req.GetKey())
	v.token(req.GetToken())
	lease := v.duration("lease", req.GetLease(), s.cfg.DefaultLease, s.cfg.MaxLease)
	if err := v.err(); err != nil {
		return nil, err
	}
	res, err := s.propose(ctx, by, 0, mustMarshal(&statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{
		Namespace: req.GetNamespace(),
		Key:       req.GetKey(),
		Token:     req.GetToken(),
		Lease:     int64(lease),
	}}}))
	if err != nil {
		return nil, err
	}
	return &keystorev1.HeartbeatResponse{Record: toRecord(req.GetNamespace(), req.GetKey(), res.GetRecord())}, nil
}

// Get implements docs/contract.md's Get: linearizable through ReadIndex unless
// the caller asks for STALE.
func (s *service) Get(ctx context.Context, req *keystorev1.GetRequest) (*keystorev1.GetResponse, error) {
	if err := s.cfg.Access.CheckNamespace(ctx, req.GetNamespace()); err != nil {
		return nil, err
	}
	if err := s.limits.admit(req.GetNamespace()); err != nil {
		return nil, err
	}
	var v validator
	v.namespace(req.GetNamespace())
	v.key(req.GetKey())
	v.consistency(req.GetConsistency())
	if err := v.err(); err != nil {
		return nil, err
	}
	if req.GetConsistency() != keystorev1.Consistency_CONSISTENCY_STALE && !bugs.LeaseReads {
		octx, cancel := s.opContext(ctx, deadlineOf(ctx))
		err := s.repl.ReadIndex(octx)
		cancel()
		if err != nil {
			return nil, s.callError(ctx, err)
		}
	}
	rec, _, err := s.store.Get(req.GetNamespace(), req.GetKey())
	if err != nil {
		return nil, errorStatus(s.logger, err)
	}
	// The store judged expiry at the last applied log time, which on an
	// idle cluster trails by up to a tick; judge again at the current log
	// time, as the next Claim would.
	if rec.GetExpiresAt() <= s.cfg.LogNow() {
		return nil, errorStatus(s.logger, rules.ErrNotFound)
	}
	out := toRecord(req.GetNamespace(), req.GetKey(), rec)
	if !s.cfg.Access.SeesLiveTokens(ctx) {
		hideLiveToken(out)
	}
	return &keystorev1.GetResponse{Record: out}, nil
}

// propose replicates cmd by the deadline by and decodes its result; a
// refusal by the state machine comes back as the matching gRPC status.
func (s *service) propose(ctx context.Context, by deadline, requestID uint64, cmd []byte) (*statev1.Result, error) {
	octx, cancel := s.opContext(ctx, by)
	defer cancel()
	res, err := s.repl.Propose(octx, requestID, cmd)
	if err != nil {
		return nil, s.callError(ctx, err)
	}
	if err := rules.ResultError(res); err != nil {
		return nil, errorStatus(s.logger, err)
	}
	return res, nil
}

// callError maps a replication error, telling the caller's own cancellation
// apart from a quorum that did not answer in time.
func (s *service) callError(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return errorStatus(s.logger, context.Canceled)
	}
	return errorStatus(s.logger, err)
}

// opContext bounds one replication round by RequestTimeout and ends it a
// little before the deadline by, so that the caller hears UNAVAILABLE from
// the server rather than its own DEADLINE_EXCEEDED. Its timer is the one
// that keeps a streamed operation's timeout, which is not on ctx (see
// deadline in batch.go).
func (s *service) opContext(ctx context.Context, by deadline) (context.Context, context.CancelFunc) {
	end := time.Now().Add(s.cfg.RequestTimeout)
	if by.ok {
		end = earliest(end, by.t.Add(-margin(time.Until(by.t))))
	}
	return context.WithDeadline(ctx, end)
}

// margin is how long before a caller's deadline the server gives up.
// None once the deadline has passed.
func margin(remaining time.Duration) time.Duration {
	return max(min(remaining/10, 250*time.Millisecond), 0)
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic("api: marshal command: " + err.Error())
	}
	return b
}

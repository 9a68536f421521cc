package client

import (
	"context"
	"slices"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ClaimRequest is a Claim. Zero durations take the server's defaults (lease
// 30s, retention 24h) and no wait.
type ClaimRequest struct {
	Namespace   string
	Key         string
	Fingerprint []byte
	Lease       time.Duration
	Retention   time.Duration
	// Wait blocks on a live claim of another caller until it completes, is
	// released or its lease ends, up to Wait.
	Wait  time.Duration
	Owner string
}

// Claim claims a key. Retries on other nodes carry one request id, so a
// retry of a Claim that was applied but whose answer was lost still returns
// Acquired with the same token.
func (c *Client) Claim(ctx context.Context, req ClaimRequest) (*ClaimResult, error) {
	in := &keystorev1.ClaimRequest{
		Namespace:   req.Namespace,
		Key:         req.Key,
		Fingerprint: req.Fingerprint,
		Lease:       duration(req.Lease),
		Retention:   duration(req.Retention),
		Wait:        duration(req.Wait),
		Owner:       req.Owner,
		RequestId:   newRequestID(),
	}
	var out *keystorev1.ClaimResponse
	op := &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Claim{Claim: in}}
	err := c.invoke(ctx, req.Wait, func(ctx context.Context, e *endpoint, limit time.Time) error {
		if req.Wait > 0 {
			// A waiting Claim would hold up a whole batch.
			ctx, cancel := bounded(ctx, limit)
			defer cancel()
			r, err := e.kv.Claim(ctx, in)
			out = r
			return err
		}
		r, err := e.batch.do(ctx, op, limit)
		out = r.GetClaim()
		return err
	})
	if err != nil {
		return nil, err
	}
	return &ClaimResult{Outcome: fromOutcome(out.GetOutcome()), Token: out.GetToken(), Record: fromRecord(out.GetRecord())}, nil
}

// CompleteRequest stores the response of a claimed operation.
type CompleteRequest struct {
	Namespace string
	Key       string
	Token     uint64
	Response  Response
	// Retention from completion; zero keeps the one given at Claim.
	Retention time.Duration
}

// Complete stores the response. Completing again with the same token
// returns the stored record (the first response wins), so retries are safe.
func (c *Client) Complete(ctx context.Context, req CompleteRequest) (*Record, error) {
	in := &keystorev1.CompleteRequest{
		Namespace: req.Namespace,
		Key:       req.Key,
		Token:     req.Token,
		Response:  toResponse(req.Response),
		Retention: duration(req.Retention),
	}
	var out *keystorev1.CompleteResponse
	op := &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Complete{Complete: in}}
	err := c.invoke(ctx, 0, func(ctx context.Context, e *endpoint, limit time.Time) error {
		r, err := e.batch.do(ctx, op, limit)
		out = r.GetComplete()
		return err
	})
	if err != nil {
		return nil, err
	}
	return fromRecord(out.GetRecord()), nil
}

// Release gives up a claim after a retryable failure, so that the next
// Claim acquires.
func (c *Client) Release(ctx context.Context, namespace, key string, token uint64) error {
	op := &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Release{
		Release: &keystorev1.ReleaseRequest{Namespace: namespace, Key: key, Token: token},
	}}
	return c.invoke(ctx, 0, func(ctx context.Context, e *endpoint, limit time.Time) error {
		_, err := e.batch.do(ctx, op, limit)
		return err
	})
}

// Heartbeat extends a claim's lease to lease from now (zero: the server's
// default), capped at the record's expiry.
func (c *Client) Heartbeat(ctx context.Context, namespace, key string, token uint64, lease time.Duration) (*Record, error) {
	op := &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Heartbeat{
		Heartbeat: &keystorev1.HeartbeatRequest{Namespace: namespace, Key: key, Token: token, Lease: duration(lease)},
	}}
	var out *keystorev1.HeartbeatResponse
	err := c.invoke(ctx, 0, func(ctx context.Context, e *endpoint, limit time.Time) error {
		r, err := e.batch.do(ctx, op, limit)
		out = r.GetHeartbeat()
		return err
	})
	if err != nil {
		return nil, err
	}
	return fromRecord(out.GetRecord()), nil
}

// Get reads a record, linearizably.
func (c *Client) Get(ctx context.Context, namespace, key string) (*Record, error) {
	return c.get(ctx, namespace, key, keystorev1.Consistency_CONSISTENCY_LINEARIZABLE)
}

// GetStale reads a record from whichever node answers, possibly stale.
func (c *Client) GetStale(ctx context.Context, namespace, key string) (*Record, error) {
	return c.get(ctx, namespace, key, keystorev1.Consistency_CONSISTENCY_STALE)
}

func (c *Client) get(ctx context.Context, namespace, key string, cons keystorev1.Consistency) (*Record, error) {
	in := &keystorev1.GetRequest{Namespace: namespace, Key: key, Consistency: cons}
	var out *keystorev1.GetResponse
	err := c.invoke(ctx, 0, func(ctx context.Context, e *endpoint, limit time.Time) (err error) {
		ctx, cancel := bounded(ctx, limit)
		defer cancel()
		out, err = e.kv.Get(ctx, in)
		return err
	})
	if err != nil {
		return nil, err
	}
	return fromRecord(out.GetRecord()), nil
}

// NodeStatus is one endpoint's view of the cluster, or why it gave none.
type NodeStatus struct {
	Endpoint string
	Status   *keystorev1.StatusResponse
	Err      error
}

// Status asks every endpoint, at once, for its view of the cluster (no
// retries: a node that does not answer within 2s, or ctx, is reported as
// such). The endpoints are those the client calls now: the ones it was
// given and, unless discovery is off, the members it learnt of.
func (c *Client) Status(ctx context.Context) []NodeStatus {
	out := c.status(ctx, c.set.Load())
	return slices.DeleteFunc(out, func(st NodeStatus) bool { return st.Err == errRetired })
}

func duration(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

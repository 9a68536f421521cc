package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc/status"
)

// Func is an operation Do protects. Its ctx is cancelled if the claim is
// lost while it runs. It returns the response to store and replay, or an
// error: wrap it with Retryable to have the claim released so a retry runs
// the operation again; any other error is a deterministic failure, stored
// (with the Response returned beside it) and replayed to every retry.
type Func func(ctx context.Context) (Response, error)

// Result is what Do returns.
type Result struct {
	// Response is the operation's response: just produced, or replayed.
	Response Response
	// Replayed is true when the operation ran earlier and this is its
	// stored response.
	Replayed bool
	// Record is the key's record as Do left it.
	Record *Record
}

// DoOption adjusts Do.
type DoOption func(*doConfig)

type doConfig struct {
	lease, retention, wait time.Duration
	owner                  string
}

// WithLease sets the claim's lease (default 30s; zero or negative keeps
// it); Do heartbeats every third of it while the operation runs.
func WithLease(d time.Duration) DoOption {
	return func(c *doConfig) {
		if d > 0 {
			c.lease = d
		}
	}
}

// WithRetention sets how long the record, and so the replay, lives (default:
// the server's, 24h).
func WithRetention(d time.Duration) DoOption { return func(c *doConfig) { c.retention = d } }

// WithWait sets how long Do waits for another caller's claim on the key to
// resolve before it gives up with ErrInProgress (default 10s; zero: do not
// wait).
func WithWait(d time.Duration) DoOption { return func(c *doConfig) { c.wait = max(d, 0) } }

// WithOwner sets the claim's owner text (default DefaultOwner()).
func WithOwner(owner string) DoOption { return func(c *doConfig) { c.owner = owner } }

// Retryable marks err as a transient failure: Do releases the claim so the
// next attempt runs the operation again.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return retryableError{err}
}

// IsRetryable reports whether err was marked with Retryable.
func IsRetryable(err error) bool {
	var r retryableError
	return errors.As(err, &r)
}

type retryableError struct{ err error }

func (r retryableError) Error() string { return r.err.Error() }
func (r retryableError) Unwrap() error { return r.err }

// DefaultOwner returns the owner text that Do, grpcidem and httpidem give
// their claims unless told otherwise: this process's host name and id,
// "host:pid".
func DefaultOwner() string { return defaultOwner }

var defaultOwner = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}()

// errorMetadataKey is the Response metadata entry of a response Do stores
// in place of one it could not: an operation's error without a response,
// or a response over the store's limits.
const errorMetadataKey = "keystore-error"

// Do runs fn at most once per record lifetime of (namespace, key) across
// every caller and retry:
//   - the key completed earlier: its stored response is returned, Replayed;
//   - another caller holds it: Do waits (WithWait) for it to resolve, then
//     replays, acquires, or returns ErrInProgress;
//   - acquired: fn runs while Do holds the claim (see Hold); its response
//     is stored with Complete. A Retryable error releases the claim; any other
//     error is stored as the response (its Response, or one built from the
//     error) and returned with it.
//
// If the claim is lost while fn runs (a heartbeat found that another
// caller took the key over, or none was delivered for a whole lease), fn's
// ctx is cancelled and Do returns an error wrapping ErrClaimLost. A
// fingerprint that differs from the key's returns ErrFingerprintMismatch
// without running fn.
func (c *Client) Do(ctx context.Context, namespace, key string, fingerprint []byte, fn Func, opts ...DoOption) (*Result, error) {
	cfg := doConfig{lease: defaultLease, wait: 10 * time.Second, owner: defaultOwner}
	for _, o := range opts {
		o(&cfg)
	}
	claim, err := c.Claim(ctx, ClaimRequest{
		Namespace: namespace, Key: key, Fingerprint: fingerprint,
		Lease: cfg.lease, Retention: cfg.retention, Wait: cfg.wait, Owner: cfg.owner,
	})
	if err != nil {
		return nil, err
	}
	switch claim.Outcome {
	case Completed:
		res := &Result{Replayed: true, Record: claim.Record}
		if claim.Record != nil && claim.Record.Response != nil {
			res.Response = *claim.Record.Response
		}
		return res, nil
	case InProgress:
		if claim.Record == nil {
			return nil, ErrInProgress
		}
		return nil, fmt.Errorf("%w: held by %q until %s", ErrInProgress, claim.Record.Owner, claim.Record.LeaseExpiresAt.Format(time.RFC3339Nano))
	case Acquired:
	default:
		return nil, fmt.Errorf("keystore: unexpected claim outcome %v", claim.Outcome)
	}

	// NB: Hold counts the lease from now, just after the grant: a Claim
	// that waited for another holder held nothing meanwhile.
	resp, ferr, lost := c.runHeld(ctx, namespace, key, claim.Token, cfg.lease, fn)
	if lost != nil {
		return nil, lost
	}
	// The caller may be gone; finishing the record must not depend on it.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if ferr != nil && (IsRetryable(ferr) || errors.Is(ferr, context.Canceled) || errors.Is(ferr, context.DeadlineExceeded)) {
		if err := c.Release(fctx, namespace, key, claim.Token); err != nil && !errors.Is(err, ErrClaimLost) {
			return nil, errors.Join(ferr, err)
		}
		return nil, ferr
	}
	if ferr != nil && resp.Code == 0 && len(resp.Body) == 0 {
		// NB: not the error's text, which would be replayed to every
		// caller of the key: return a Response to store a message.
		resp = Response{Code: int32(status.Code(ferr)), Metadata: map[string]string{errorMetadataKey: "operation failed"}}
	}
	rec, err := c.Complete(fctx, CompleteRequest{Namespace: namespace, Key: key, Token: claim.Token, Response: resp})
	if errors.Is(err, ErrInvalidArgument) {
		// The operation ran but its response cannot be stored (too large,
		// say). Store a marker instead: releasing would let a retry run
		// the operation again.
		resp = Response{Code: resp.Code, Metadata: map[string]string{errorMetadataKey: "response not storable: " + err.Error()}}
		rec, err = c.Complete(fctx, CompleteRequest{Namespace: namespace, Key: key, Token: claim.Token, Response: resp})
	}
	if err != nil {
		return nil, err
	}
	res := &Result{Response: resp, Record: rec}
	if rec != nil && rec.Response != nil {
		res.Response = *rec.Response // the first response wins
	}
	return res, ferr
}

// runHeld runs fn while Hold keeps the claim. lost, unless nil, says why
// the claim was lost while fn ran (it wraps ErrClaimLost). fn's ctx follows
// the caller's; the heartbeats do not: if the caller gives up while fn goes
// on, the claim stays held until fn returns, so a retry cannot take over
// and run fn a second time.
func (c *Client) runHeld(ctx context.Context, namespace, key string, token uint64, lease time.Duration, fn Func) (resp Response, err, lost error) {
	held, stop := c.Hold(ctx, namespace, key, token, lease)
	defer func() {
		if p := recover(); p != nil {
			_ = stop()
			// Let the next caller run it: the work did not finish.
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = c.Release(rctx, namespace, key, token)
			rcancel()
			panic(p)
		}
	}()
	resp, err = fn(held)
	return resp, err, stop()
}

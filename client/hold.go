package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// defaultLease is keystore's default lease (docs/contract.md), which Do uses
// unless WithLease says otherwise.
const defaultLease = 30 * time.Second

// minHeartbeatInterval bounds how often Hold heartbeats, however short the
// lease.
const minHeartbeatInterval = 10 * time.Millisecond

// Hold keeps the claim on (namespace, key) that token fences while the work
// it guards runs: it heartbeats the claim every third of lease, the lease
// given to Claim (zero or negative: keystore's default, 30s). Do, and the
// subpackages grpcidem and httpidem, hold their claims with it.
//
// Call Hold as soon as Claim answers Acquired: the lease is counted from
// the call, which follows the grant, and not from when Claim was sent (a
// Claim that waited for another caller's claim held nothing meanwhile).
//
// The claim counts as lost only when a heartbeat's answer says so
// (ErrClaimLost or ErrAlreadyCompleted: another caller took the key over),
// or when no heartbeat was delivered for a whole lease since the grant or
// since the last heartbeat that was. A failed heartbeat is tried again
// while the lease runs: a lapsed lease stays its holder's until someone
// else claims the key, but after a whole lease without renewal someone may
// have.
//
// Hold returns a context derived from ctx that is cancelled, with a cause
// wrapping ErrClaimLost, when the claim is lost: run the work under it. The
// heartbeats take ctx's values but not its end: they go on until stop is
// called, even after ctx is done, so that a caller who gives up while the
// work goes on does not let a retry take the key over and run the work a
// second time.
//
// stop ends the heartbeats, waits for them and cancels the returned
// context. It returns nil if the claim was held until then, or an error
// wrapping ErrClaimLost. Call it once the work has returned, before
// Complete or Release; it may be called more than once, from any
// goroutine.
func (c *Client) Hold(ctx context.Context, namespace, key string, token uint64, lease time.Duration) (held context.Context, stop func() error) {
	granted := time.Now()
	if lease <= 0 {
		lease = defaultLease
	}
	held, cancel := context.WithCancelCause(ctx)
	hbctx, hbcancel := context.WithCancel(context.WithoutCancel(ctx))
	var lost error // written before done is closed
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.keepAlive(hbctx, namespace, key, token, lease, granted); err != nil {
			lost = err
			cancel(err)
		}
	}()
	var once sync.Once
	stop = func() error {
		once.Do(func() {
			hbcancel()
			<-done
			cancel(nil)
		})
		return lost
	}
	return held, stop
}

// keepAlive heartbeats the claim until ctx is done, then returns nil, or
// until the claim is lost, then returns why (an error wrapping
// ErrClaimLost). granted is when the lease began.
func (c *Client) keepAlive(ctx context.Context, namespace, key string, token uint64, lease time.Duration, granted time.Time) error {
	every := max(lease/3, minHeartbeatInterval)
	// leaseEnd is when the lease ends unless a heartbeat is delivered
	// first; next is when the next heartbeat goes.
	leaseEnd := granted.Add(lease)
	next := granted.Add(every)
	var failed error // the last heartbeat's error, since the last success
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		if !time.Now().Before(leaseEnd) {
			if failed == nil {
				return fmt.Errorf("%w: lease of %s not renewed in time", ErrClaimLost, lease)
			}
			return fmt.Errorf("%w: lease of %s not renewed in time: %w", ErrClaimLost, lease, failed)
		}
		sent := time.Now()
		// NB: a heartbeat delivered after leaseEnd would come too late to
		// count, so none waits longer.
		hctx, hcancel := context.WithDeadline(ctx, leaseEnd)
		_, err := c.Heartbeat(hctx, namespace, key, token, lease)
		hcancel()
		switch {
		case err == nil:
			// The server counts the new lease from when it applied the
			// heartbeat, which is after sent.
			leaseEnd = sent.Add(lease)
			next = sent.Add(every)
			failed = nil
		case ctx.Err() != nil:
			return nil // stopped while the heartbeat was out
		case errors.Is(err, ErrClaimLost):
			return err
		case errors.Is(err, ErrAlreadyCompleted):
			return fmt.Errorf("%w: %w", ErrClaimLost, err)
		default:
			// Not renewed yet, but the lease still runs: try again, and
			// give up once it has ended.
			failed = err
			next = time.Now().Add(every)
			if next.After(leaseEnd) {
				next = leaseEnd
			}
		}
		timer.Reset(time.Until(next))
	}
}

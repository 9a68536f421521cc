package httpidem

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/keystore-dev/keystore/client"
)

// hold keeps a claim's lease alive until stop is called: it heartbeats
// every third of the lease. It calls lost, once, when the claim is lost:
// a heartbeat answered that the token is fenced off, or no heartbeat
// succeeded before the lease ran out, after which another request may take
// the key over.
//
// NB: the lease is counted from claimSent, the moment the Claim was sent:
// the server stamped the grant later, so this end is never later than the
// server's. After a Claim that waited, that end may be near or past; the
// first heartbeat then goes at once and gets a third of the lease to
// answer, since the token stays current until another request takes over.
//
// stop waits for the heartbeat goroutine to end; it is safe to call more
// than once.
func (h *handler) hold(ns, key string, token uint64, claimSent time.Time, lost func()) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		lease := h.cfg.lease
		every := max(lease/3, 10*time.Millisecond)
		leaseEnd := claimSent.Add(lease)
		timer := time.NewTimer(max(every-time.Since(claimSent), 0))
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
			sent := time.Now()
			hctx, hcancel := context.WithDeadline(ctx, later(leaseEnd, sent.Add(every)))
			_, err := h.c.Heartbeat(hctx, ns, key, token, lease)
			hcancel()
			switch {
			case err == nil:
				leaseEnd = sent.Add(lease)
			case ctx.Err() != nil:
				return // stopped while the heartbeat was in flight
			case errors.Is(err, client.ErrClaimLost), errors.Is(err, client.ErrAlreadyCompleted):
				h.cfg.logger.Warn("claim lost while the handler ran", "namespace", ns, "key", key, "token", token, "err", err)
				lost()
				return
			case !time.Now().Before(leaseEnd):
				h.cfg.logger.Warn("lease not renewed in time; assuming the claim lost", "namespace", ns, "key", key, "token", token, "err", err)
				lost()
				return
			default:
				h.cfg.logger.Debug("heartbeat failed; retrying", "namespace", ns, "key", key, "err", err)
			}
			timer.Reset(every)
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/keystore-dev/keystore/client/httpidem"
)

// payer is the client of the payment service: it sends each payment with
// its own Idempotency-Key and retries it, with the same key and body, until
// it is answered or its attempts or time run out.
type payer struct {
	http           *http.Client
	url            string // where POST /charge goes (the proxy)
	maxAttempts    int
	attemptTimeout time.Duration

	attempts, replays, busy atomic.Int64
}

func newPayer(url string, maxAttempts int) *payer {
	return &payer{
		// NB: no keep-alive. net/http silently resends a request that
		// carries an Idempotency-Key when a reused connection fails, which
		// would hide attempts from the count (and from the proxy's faults).
		http:           &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		url:            url,
		maxAttempts:    maxAttempts,
		attemptTimeout: 5 * time.Second,
	}
}

// payment is the outcome of one payment.
type payment struct {
	key      string
	chargeID string // empty unless answered
	attempts int
	err      error // why it was not answered
}

// errPermanent marks an answer that retrying cannot change.
var errPermanent = errors.New("permanent failure")

// pay sends one payment until it is answered.
func (p *payer) pay(ctx context.Context, key string, req chargeRequest) payment {
	body, err := json.Marshal(req)
	if err != nil {
		return payment{key: key, err: err}
	}
	out := payment{key: key}
	for out.attempts < p.maxAttempts {
		if err := ctx.Err(); err != nil {
			out.err = fmt.Errorf("%w before attempt %d", err, out.attempts+1)
			return out
		}
		out.attempts++
		p.attempts.Add(1)
		id, pause, err := p.attempt(ctx, key, body)
		if err == nil {
			out.chargeID = id
			return out
		}
		out.err = err
		if errors.Is(err, errPermanent) || ctx.Err() != nil {
			return out
		}
		pause = max(pause, backoff(out.attempts))
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			out.err = fmt.Errorf("%w (last: %w)", ctx.Err(), err)
			return out
		}
	}
	out.err = fmt.Errorf("no answer after %d attempts (last: %w)", out.attempts, out.err)
	return out
}

// attempt sends the payment once. It returns the charge id, or why not and
// how long the service asked to wait before the next attempt.
func (p *payer) attempt(ctx context.Context, key string, body []byte) (chargeID string, pause time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.attemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url+"/charge", bytes.NewReader(body))
	if err != nil {
		return "", 0, fmt.Errorf("%w: %w", errPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(httpidem.DefaultHeader, key)
	resp, err := p.http.Do(req)
	if err != nil {
		return "", 0, err // the connection failed: no answer, retry
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", 0, err
	}
	switch {
	case resp.StatusCode == http.StatusCreated:
		var cr chargeResponse
		if err := json.Unmarshal(answer, &cr); err != nil || cr.ChargeID == "" {
			return "", 0, fmt.Errorf("%w: bad answer %q", errPermanent, answer)
		}
		if resp.Header.Get(httpidem.ReplayedHeader) == "true" {
			p.replays.Add(1)
		}
		return cr.ChargeID, 0, nil
	case resp.StatusCode == http.StatusConflict, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		// In progress elsewhere, or a transient failure: the service says
		// when to come back. Keep the demo brisk: at most a second.
		p.busy.Add(1)
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return "", min(time.Duration(secs)*time.Second, time.Second), fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(answer))
	}
	return "", 0, fmt.Errorf("%w: HTTP %d: %s", errPermanent, resp.StatusCode, bytes.TrimSpace(answer))
}

// backoff is the pause before attempt n+1: exponential from 5ms, capped at
// 200ms, fully jittered. (The jitter only spreads retries in time; it does
// not change which attempts the proxy mistreats.)
func backoff(n int) time.Duration {
	ceil := min(5*time.Millisecond<<min(n-1, 10), 200*time.Millisecond)
	return rand.N(ceil) + time.Millisecond
}

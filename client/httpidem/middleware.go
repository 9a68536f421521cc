package httpidem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	keyscope "github.com/keystore-dev/keystore/client/internal/scope"
	"io"
	"math"
	"net/http"
	"time"

	"github.com/keystore-dev/keystore/client"
)

// finishTimeout bounds the Complete or Release that ends a claim. It does
// not depend on the HTTP caller, who may be gone by then.
const finishTimeout = 10 * time.Second

// unavailableRetryAfter is the Retry-After, in seconds, of a 503.
const unavailableRetryAfter = 1

// Middleware returns middleware that makes the requests it protects
// effectively-once with keystore, following the IETF Idempotency-Key header
// draft: a protected request (by default POST or PATCH) that carries an
// Idempotency-Key runs the handler at most once per key and request, and
// every retry gets the first response back. See the package documentation
// for every answer it gives.
//
// WithNamespace is required. Middleware panics on an invalid configuration
// (like http.ServeMux on an invalid pattern), since that is a programming
// error found at startup. c is used by every request and must stay open
// while the handler serves.
func Middleware(c *client.Client, opts ...Option) func(http.Handler) http.Handler {
	if c == nil {
		panic("httpidem: Middleware: nil client")
	}
	cfg, err := newConfig(opts)
	if err != nil {
		panic(err.Error())
	}
	return func(next http.Handler) http.Handler {
		return &handler{c: c, cfg: cfg, next: next}
	}
}

// handler is the protected handler.
type handler struct {
	c    *client.Client
	cfg  config
	next http.Handler
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.cfg.methods[r.Method] {
		h.next.ServeHTTP(w, r)
		return
	}

	values := r.Header.Values(h.cfg.header)
	if len(values) == 0 && !h.cfg.keyRequired {
		h.next.ServeHTTP(w, r)
		return
	}
	// Whose key it is. NB: the caller is identified before its key is
	// looked at, so that a caller RequireScope refuses gets 401 whatever
	// it sent.
	prefix, ok := h.scopePrefix(w, r)
	if !ok {
		return
	}
	key, err := parseKey(values, MaxKeyLen)
	switch {
	case errors.Is(err, errKeyMissing):
		writeProblem(w, ProblemKeyMissing, http.StatusBadRequest,
			fmt.Sprintf("This request must carry an %s header, unique to the operation, and the same on every retry of it.", h.cfg.header), 0)
		return
	case err != nil:
		writeProblem(w, ProblemKeyInvalid, http.StatusBadRequest, fmt.Sprintf("The %s header %s.", h.cfg.header, err), 0)
		return
	}
	key = prefix + key

	// The body, read for the fingerprint and restored for the handler.
	if r.ContentLength > h.cfg.maxBody {
		h.tooLarge(w)
		return
	}
	var body []byte
	if r.Body != nil {
		body, err = io.ReadAll(io.LimitReader(r.Body, h.cfg.maxBody+1))
		var maxErr *http.MaxBytesError
		switch {
		case errors.As(err, &maxErr): // an outer http.MaxBytesReader
			h.tooLarge(w)
			return
		case err != nil:
			writeProblem(w, ProblemBodyUnreadable, http.StatusBadRequest, "The request body could not be read.", 0)
			return
		case int64(len(body)) > h.cfg.maxBody:
			h.tooLarge(w)
			return
		}
	}
	fp := client.Fingerprint(r.Method, h.cfg.route(r), body)

	claim, err := h.c.Claim(r.Context(), client.ClaimRequest{
		Namespace: h.cfg.namespace, Key: key, Fingerprint: fp,
		Lease: h.cfg.lease, Retention: h.cfg.retention, Wait: h.cfg.wait, Owner: h.cfg.owner,
	})
	if err != nil {
		h.claimFailed(w, r, key, err)
		return
	}
	switch claim.Outcome {
	case client.Completed:
		h.replay(w, key, claim.Record)
	case client.InProgress:
		writeProblem(w, ProblemInProgress, http.StatusConflict,
			"Another request with this idempotency key is being processed. Retry it after Retry-After seconds.",
			retryAfter(claim.Record, time.Now()))
	case client.Acquired:
		h.run(w, r, body, key, claim.Token)
	default:
		h.cfg.logger.Error("unexpected claim outcome", "key", logKey(key), "outcome", claim.Outcome)
		writeProblem(w, ProblemInternal, http.StatusInternalServerError, "The request could not be processed.", 0)
	}
}

// scopePrefix returns the prefix of the request's keystore key, by the
// scope of its caller, or answers the request and returns false.
func (h *handler) scopePrefix(w http.ResponseWriter, r *http.Request) (string, bool) {
	if h.cfg.scope == nil { // WithoutScope
		return keyscope.Prefix("", false), true
	}
	scope, ok := h.cfg.scope(r)
	switch {
	case ok && scope == "":
		h.cfg.logger.Error("the scope function returned ok with an empty scope")
		writeProblem(w, ProblemInternal, http.StatusInternalServerError, "The request could not be processed.", 0)
		return "", false
	case !ok && h.cfg.requireScope:
		writeProblem(w, ProblemUnauthenticated, http.StatusUnauthorized,
			"The caller of this request could not be identified. Requests with an idempotency key must be authenticated.", 0)
		return "", false
	}
	return keyscope.Prefix(scope, ok), true
}

func (h *handler) tooLarge(w http.ResponseWriter) {
	writeProblem(w, ProblemBodyTooLarge, http.StatusRequestEntityTooLarge,
		fmt.Sprintf("The request body must be at most %d bytes.", h.cfg.maxBody), 0)
}

// claimFailed answers a Claim that failed. No internal error text reaches
// the caller.
func (h *handler) claimFailed(w http.ResponseWriter, r *http.Request, key string, err error) {
	switch {
	case errors.Is(err, client.ErrFingerprintMismatch):
		writeProblem(w, ProblemKeyReused, http.StatusUnprocessableEntity,
			"This idempotency key was used for a different request (method, route or body). Use a new key for a new request.", 0)
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		if r.Context().Err() == nil {
			h.cfg.logger.Warn("claim failed", "key", logKey(key), "err", err)
		}
		writeProblem(w, ProblemUnavailable, http.StatusServiceUnavailable,
			"The idempotency store could not be reached. The request was not processed; retry it with the same key.", unavailableRetryAfter)
	default: // e.g. ErrInvalidArgument: a lease or retention over the server's limits
		h.cfg.logger.Error("claim failed", "key", logKey(key), "err", err)
		writeProblem(w, ProblemInternal, http.StatusInternalServerError, "The request could not be processed.", 0)
	}
}

// replay answers with a stored response.
func (h *handler) replay(w http.ResponseWriter, key string, rec *client.Record) {
	var stored *client.Response
	if rec != nil {
		stored = rec.Response
	}
	resp, err := fromStored(stored)
	if err != nil {
		h.cfg.logger.Error("cannot replay", "key", logKey(key), "err", err)
		writeProblem(w, ProblemInternal, http.StatusInternalServerError, "The request could not be processed.", 0)
		return
	}
	resp.write(w, true)
}

// retryAfter is the whole seconds until the holder's lease ends, at least 1.
// maxRetryAfter caps the Retry-After of a 409.
const maxRetryAfter = 5 * time.Second

func retryAfter(rec *client.Record, now time.Time) int {
	if rec == nil || rec.LeaseExpiresAt.IsZero() {
		return 1
	}
	// The holder usually finishes long before its lease ends, so the
	// advice is capped: a retry after a few seconds most likely replays.
	s := math.Ceil(rec.LeaseExpiresAt.Sub(now).Seconds())
	return int(min(max(s, 1), maxRetryAfter.Seconds()))
}

// run runs the handler under the claim (token) and stores its response, or
// releases the claim when the response is transient. Call it as soon as
// the claim is granted: the lease is counted from then (client.Hold).
func (h *handler) run(w http.ResponseWriter, r *http.Request, body []byte, key string, token uint64) {
	ns := h.cfg.namespace
	ctx, stop := h.c.Hold(r.Context(), ns, key, token, h.cfg.lease)
	// Ending the claim must not depend on the caller, who may be gone; its
	// time starts once the handler has returned.
	finishCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(r.Context()), finishTimeout)
	}

	// NB: if the handler panics, the claim is released so that a retry runs
	// it again (the panic goes on up). Run may not have finished its work,
	// but it did not answer either.
	finished := false
	defer func() {
		if !finished {
			_ = stop()
			fctx, fcancel := finishCtx()
			defer fcancel()
			h.release(fctx, key, token)
		}
	}()
	hr := r.WithContext(ctx)
	hr.Body = io.NopCloser(bytes.NewReader(body))
	rec := newRecorder()
	h.next.ServeHTTP(rec, hr)
	finished = true
	lost := stop()
	fctx, fcancel := finishCtx()
	defer fcancel()

	if lost != nil {
		h.cfg.logger.Warn("claim lost while the handler ran", "namespace", ns, "key", logKey(key), "token", token, "err", lost)
		claimLost(w)
		return
	}
	resp := rec.response()
	// A transient failure, or a handler that gave up answering a caller who
	// left: let a retry run the handler again.
	if transient(resp.status) || (!rec.wrote() && r.Context().Err() != nil) {
		h.release(fctx, key, token)
		resp.write(w, false)
		return
	}
	stored, err := h.c.Complete(fctx, client.CompleteRequest{Namespace: ns, Key: key, Token: token, Response: resp.toStored()})
	switch {
	case err == nil:
	case errors.Is(err, client.ErrClaimLost):
		h.cfg.logger.Warn("claim lost before the response was stored", "key", logKey(key), "token", token, "err", err)
		claimLost(w)
		return
	case errors.Is(err, client.ErrInvalidArgument):
		// Over the store's limits (body or headers): keep the key from
		// running again, and give this caller the real response.
		h.cfg.logger.Warn("response too large to store; storing a problem instead", "key", logKey(key), "err", err)
		notStored := problemResponse(ProblemResponseNotStored, http.StatusConflict,
			"The request with this idempotency key was processed, but its response was too large to keep for replay. Its effects stand; do not repeat it with a new key without checking them.", 0)
		if _, err := h.c.Complete(fctx, client.CompleteRequest{Namespace: ns, Key: key, Token: token, Response: notStored.toStored()}); err != nil {
			h.cfg.logger.Error("storing the problem failed", "key", logKey(key), "err", err)
		}
		resp.write(w, false)
		return
	default:
		// The record stays IN_PROGRESS until its lease ends; the handler
		// did run, so this caller still gets its response.
		h.cfg.logger.Error("storing the response failed; a retry after the lease ends will run the handler again", "key", logKey(key), "token", token, "err", err)
		resp.write(w, false)
		return
	}
	sr := resp.toStored()
	if stored != nil && stored.Response != nil {
		sr = *stored.Response // the first response stored wins
	}
	if out, err := fromStored(&sr); err == nil {
		resp = out
	}
	// Send what a replay will send, so the first answer and every replay
	// match byte for byte (but for ReplayedHeader).
	resp.write(w, false)
}

// claimLost answers a request whose handler ran without the claim.
func claimLost(w http.ResponseWriter) {
	writeProblem(w, ProblemClaimLost, http.StatusConflict,
		"The request was processed, but its hold on the idempotency key was lost meanwhile, so its response was not stored and a retry may process it again. Its effects may need to be reconciled before retrying.", 0)
}

// release gives the claim up, so that the next request with the key runs
// the handler.
func (h *handler) release(ctx context.Context, key string, token uint64) {
	err := h.c.Release(ctx, h.cfg.namespace, key, token)
	switch {
	case err == nil:
	case errors.Is(err, client.ErrClaimLost):
		h.cfg.logger.Debug("release: claim already lost", "key", logKey(key), "token", token)
	default:
		h.cfg.logger.Warn("release failed; the key is blocked until its lease ends", "key", logKey(key), "token", token, "err", err)
	}
}

// transient reports whether a response status is a transient failure: not
// stored, and the claim released so that a retry runs the handler again.
func transient(status int) bool {
	return status >= 500 || status == http.StatusTooManyRequests
}

package httpidem

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/keystore-dev/keystore/client"
)

// DefaultHeader is the request header that carries the idempotency key
// unless WithHeader names another (draft-ietf-httpapi-idempotency-key-header).
const DefaultHeader = "Idempotency-Key"

// ReplayedHeader is the response header set to "true" on a replayed
// response.
const ReplayedHeader = "Idempotent-Replayed"

// Limits of keystore (docs/contract.md) and of the defaults.
const (
	maxNamespaceLen     = 64
	maxLease            = time.Hour
	defaultLease        = 30 * time.Second
	defaultMaxBodyBytes = 1 << 20
)

// Option configures Middleware.
type Option func(*config)

type config struct {
	namespace   string
	methods     map[string]bool
	header      string
	lease       time.Duration
	retention   time.Duration
	wait        time.Duration
	maxBody     int64
	route       func(*http.Request) string
	keyRequired bool
	// scope names a request's caller; nil puts every request in the
	// anonymous scope (WithoutScope).
	scope        func(*http.Request) (string, bool)
	requireScope bool
	logger       *slog.Logger
	owner        string
}

// WithNamespace sets the keystore namespace of the keys (required): 1-64
// characters of [a-z0-9._-], typically the service's name.
func WithNamespace(namespace string) Option {
	return func(c *config) { c.namespace = namespace }
}

// WithMethods replaces the HTTP methods that are protected (default POST
// and PATCH). Requests with any other method pass straight through.
// Methods are compared exactly, as net/http does.
func WithMethods(methods ...string) Option {
	return func(c *config) {
		c.methods = make(map[string]bool, len(methods))
		for _, m := range methods {
			c.methods[m] = true
		}
	}
}

// WithHeader names the request header that carries the key (default
// DefaultHeader).
func WithHeader(name string) Option {
	return func(c *config) { c.header = http.CanonicalHeaderKey(name) }
}

// WithLease sets the claim's lease (default 30s, at most 1h). It is renewed
// every third of itself while the handler runs, so it bounds how long a
// crashed server's claim blocks retries, not how long a handler may run.
// Zero or negative keeps the default.
func WithLease(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.lease = d
		}
	}
}

// WithRetention sets how long a stored response is replayed (default: the
// server's, 24h). Zero or negative keeps the default.
func WithRetention(d time.Duration) Option {
	return func(c *config) { c.retention = max(d, 0) }
}

// WithWait sets how long a request waits for another request that holds
// the same key to finish before it is answered 409 (default 0: at once).
// The wait ends early when the holder completes (the request then gets the
// replay), releases or loses its lease (the request then runs the handler).
func WithWait(d time.Duration) Option {
	return func(c *config) { c.wait = max(d, 0) }
}

// WithMaxBodyBytes caps the request body read for the fingerprint (default
// 1 MiB). A larger body is answered 413. Zero or negative keeps the default.
func WithMaxBodyBytes(n int64) Option {
	return func(c *config) {
		if n > 0 {
			c.maxBody = n
		}
	}
}

// WithRoute sets the function that derives the route part of the
// fingerprint (default: r.URL.Path + "?" + r.URL.RawQuery). A request that
// reuses a key with another method, route or body is answered 422. Return
// a canonical form when equivalent URLs should count as the same request.
func WithRoute(route func(r *http.Request) string) Option {
	return func(c *config) {
		if route != nil {
			c.route = route
		}
	}
}

// WithKeyRequired sets whether a protected request must carry the key
// (default true: a request without it is answered 400). With false such a
// request runs the handler unprotected.
func WithKeyRequired(required bool) Option {
	return func(c *config) { c.keyRequired = required }
}

// WithScope sets the function that names the caller of a request
// (default DefaultScope), e.g. the account that an authentication
// middleware put in the request's context. Keys of different scopes never
// meet: no caller can replay or block another's request by sending its
// key, as the draft asks. ok false means the request has no identity: it
// shares the anonymous scope with every other such request, or is answered
// 401 with RequireScope. The scope is neither stored nor logged, only a
// truncated SHA-256 of it; it must be the same on every retry of a
// request, and not empty when ok is true (such a request is answered 500).
// A nil function keeps the default.
//
// Give one when DefaultScope does not name callers well: when clients
// authenticate otherwise (cookies, a header of its own, a certificate
// without a CommonName), or when the Authorization header changes between
// a request and its retries (refreshed OAuth access tokens, short-lived
// JWTs; DefaultScope would give the retry a new scope, so it would run
// again), or when it carries a guessable secret (Basic credentials: the
// store would hold an unsalted hash of them).
func WithScope(scope func(r *http.Request) (scope string, ok bool)) Option {
	return func(c *config) {
		if scope != nil {
			c.scope = scope
		}
	}
}

// WithoutScope turns scoping off: every request is in the anonymous scope,
// so any caller may replay or block another's request by sending its key.
// Use it only when one trust domain uses the service (e.g. every caller is
// one of its own front ends). It undoes an earlier WithScope.
func WithoutScope() Option {
	return func(c *config) { c.scope = nil }
}

// RequireScope answers a protected request that has no identity (its scope
// function returns ok false) with 401 ProblemUnauthenticated, instead of
// serving it in the anonymous scope shared by all such requests. A request
// without a key that WithKeyRequired(false) lets through runs unprotected
// all the same. The 401 carries no WWW-Authenticate challenge of its own,
// since the middleware does not know the service's scheme; a challenge set
// on the ResponseWriter by an outer handler is kept. It cannot be combined
// with WithoutScope.
func RequireScope() Option {
	return func(c *config) { c.requireScope = true }
}

// WithKeyScope sets a function that names the caller of a request; an
// empty scope means the request has no identity.
//
// Deprecated: Use WithScope, which this calls. Scopes are on by default
// now (DefaultScope).
func WithKeyScope(scope func(r *http.Request) string) Option {
	if scope == nil {
		return WithScope(nil)
	}
	return WithScope(func(r *http.Request) (string, bool) {
		s := scope(r)
		return s, s != ""
	})
}

// WithLogger sets where the middleware logs keystore failures that it hides
// from the HTTP caller (default: discarded).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}

func newConfig(opts []Option) (config, error) {
	c := config{
		methods:     map[string]bool{http.MethodPost: true, http.MethodPatch: true},
		header:      DefaultHeader,
		lease:       defaultLease,
		maxBody:     defaultMaxBodyBytes,
		route:       func(r *http.Request) string { return r.URL.Path + "?" + r.URL.RawQuery },
		keyRequired: true,
		scope:       DefaultScope,
		logger:      slog.New(slog.DiscardHandler),
		owner:       client.DefaultOwner(),
	}
	for _, o := range opts {
		o(&c)
	}
	c.logger = c.logger.With("component", "httpidem")
	if err := validNamespace(c.namespace); err != nil {
		return c, err
	}
	switch {
	case c.header == "":
		return c, fmt.Errorf("httpidem: WithHeader: empty name")
	case c.lease > maxLease:
		return c, fmt.Errorf("httpidem: WithLease: %s is longer than keystore's maximum %s", c.lease, maxLease)
	case c.requireScope && c.scope == nil:
		return c, fmt.Errorf("httpidem: RequireScope with WithoutScope would refuse every request")
	}
	return c, nil
}

func validNamespace(ns string) error {
	if ns == "" {
		return fmt.Errorf("httpidem: WithNamespace is required")
	}
	if len(ns) > maxNamespaceLen {
		return fmt.Errorf("httpidem: namespace %q is longer than %d characters", ns, maxNamespaceLen)
	}
	for i := 0; i < len(ns); i++ {
		ch := ns[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '_' || ch == '-') {
			return fmt.Errorf("httpidem: namespace %q: only [a-z0-9._-] allowed", ns)
		}
	}
	return nil
}

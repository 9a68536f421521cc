package grpcidem

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// DefaultMetadataKey is the request metadata key that carries the
// idempotency key unless WithMetadataKey names another.
const DefaultMetadataKey = "idempotency-key"

// ReplayedHeader is the response header that UnaryServerInterceptor sets
// to "true" when it answers a call with a stored outcome.
const ReplayedHeader = "idempotent-replayed"

// Limits of keystore (docs/contract.md).
const (
	maxNamespaceLen = 64
)

// Option configures UnaryServerInterceptor.
type Option func(*config)

type config struct {
	methods     map[string]bool
	namespace   string
	lease       time.Duration
	retention   time.Duration
	wait        time.Duration
	requireKey  bool
	metadataKey string
	// scope names a call's caller; nil puts every call in the anonymous
	// scope (WithoutScope).
	scope        func(context.Context) (string, bool)
	requireScope bool
}

// WithMethods opts methods in, by full name ("/payments.v1.Payments/Charge").
// Methods not named pass straight through. It may be given more than once.
func WithMethods(fullMethods ...string) Option {
	return func(c *config) {
		for _, m := range fullMethods {
			c.methods[m] = true
		}
	}
}

// WithNamespace sets the keystore namespace of the keys (required): 1-64
// characters of [a-z0-9._-], typically the service's name.
func WithNamespace(namespace string) Option {
	return func(c *config) { c.namespace = namespace }
}

// WithLease sets the claim's lease, renewed while the handler runs
// (default: client.Do's, 30s). Zero or negative keeps the default.
func WithLease(d time.Duration) Option {
	return func(c *config) { c.lease = d }
}

// WithRetention sets how long a stored outcome is replayed (default: the
// server's, 24h). Zero or negative keeps the default.
func WithRetention(d time.Duration) Option {
	return func(c *config) { c.retention = d }
}

// WithWait sets how long a call waits for another call holding the same
// key to finish before it fails with ABORTED (default 0: fail at once).
func WithWait(d time.Duration) Option {
	return func(c *config) { c.wait = max(d, 0) }
}

// RequireKey makes opted-in calls without the idempotency key fail with
// INVALID_ARGUMENT. Without it they run unprotected.
func RequireKey() Option {
	return func(c *config) { c.requireKey = true }
}

// WithMetadataKey names the request metadata key that carries the
// idempotency key (default DefaultMetadataKey). gRPC metadata keys are
// lower case; the name is lower-cased.
func WithMetadataKey(name string) Option {
	return func(c *config) { c.metadataKey = strings.ToLower(name) }
}

// WithScope sets the function that names the caller of a call from its
// server context (default DefaultScope), e.g. the account that an
// authentication interceptor put in the context. Keys of different scopes
// never meet: no caller can replay or block another's call by sending its
// key. ok false means the call has no identity: it shares the anonymous
// scope with every other such call, or fails with UNAUTHENTICATED with
// RequireScope. The scope is neither stored nor sent anywhere, only a
// truncated SHA-256 of it; it must be the same on every retry of a call,
// and not empty when ok is true (such a call fails with INTERNAL). A nil
// function keeps the default.
//
// Give one when DefaultScope does not name callers well: when clients
// authenticate otherwise (a certificate without a CommonName, metadata of
// their own), or when the authorization metadata changes between a call
// and its retries (refreshed OAuth access tokens, short-lived JWTs;
// DefaultScope would give the retry a new scope, so it would run again),
// or when it carries a guessable secret (Basic credentials: the store
// would hold an unsalted hash of them).
func WithScope(scope func(ctx context.Context) (scope string, ok bool)) Option {
	return func(c *config) {
		if scope != nil {
			c.scope = scope
		}
	}
}

// WithoutScope turns scoping off: every call is in the anonymous scope, so
// any caller may replay or block another's call by sending its key. Use it
// only when one trust domain uses the service (e.g. every caller is one of
// its own front ends). It undoes an earlier WithScope.
func WithoutScope() Option {
	return func(c *config) { c.scope = nil }
}

// RequireScope makes opted-in calls that carry an idempotency key but have
// no identity (the scope function returns ok false) fail with
// UNAUTHENTICATED, instead of running in the anonymous scope shared by all
// such calls. Calls without a key run unprotected all the same, unless
// RequireKey. It cannot be combined with WithoutScope.
func RequireScope() Option {
	return func(c *config) { c.requireScope = true }
}

func newConfig(opts []Option) (config, error) {
	c := config{methods: map[string]bool{}, metadataKey: DefaultMetadataKey, scope: DefaultScope}
	for _, o := range opts {
		o(&c)
	}
	if err := validNamespace(c.namespace); err != nil {
		return c, err
	}
	if c.metadataKey == "" {
		return c, fmt.Errorf("grpcidem: WithMetadataKey: empty name")
	}
	if c.requireScope && c.scope == nil {
		return c, fmt.Errorf("grpcidem: RequireScope with WithoutScope would refuse every call")
	}
	return c, nil
}

func validNamespace(ns string) error {
	if ns == "" {
		return fmt.Errorf("grpcidem: WithNamespace is required")
	}
	if len(ns) > maxNamespaceLen {
		return fmt.Errorf("grpcidem: namespace %q is longer than %d characters", ns, maxNamespaceLen)
	}
	for i := 0; i < len(ns); i++ {
		ch := ns[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '_' || ch == '-') {
			return fmt.Errorf("grpcidem: namespace %q: only [a-z0-9._-] allowed", ns)
		}
	}
	return nil
}

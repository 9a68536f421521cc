package grpcidem

import (
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

// maxNamespaceLen is keystore's limit on a namespace (docs/contract.md).
const maxNamespaceLen = 64

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

func newConfig(opts []Option) (config, error) {
	c := config{methods: map[string]bool{}, metadataKey: DefaultMetadataKey}
	for _, o := range opts {
		o(&c)
	}
	if err := validNamespace(c.namespace); err != nil {
		return c, err
	}
	if c.metadataKey == "" {
		return c, fmt.Errorf("grpcidem: WithMetadataKey: empty name")
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

package api

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config holds the server-wide defaults and limits of the API.
type Config struct {
	// DefaultLease applies when a Claim or Heartbeat names no lease (30s).
	DefaultLease time.Duration
	// MaxLease is the longest lease accepted (1h).
	MaxLease time.Duration
	// DefaultRetention applies when a Claim names no retention (24h).
	DefaultRetention time.Duration
	// MaxRetention is the longest retention accepted (30 days).
	MaxRetention time.Duration
	// MaxWait is the longest Claim wait accepted (1h).
	MaxWait time.Duration
	// MaxBodyBytes caps a response body (1 MiB).
	MaxBodyBytes int
	// MaxMetadataBytes caps a response's metadata, keys and values (64 KiB).
	MaxMetadataBytes int
	// RequestTimeout bounds how long a write or linearizable read waits for
	// a quorum when the caller's deadline is later or absent (5s). Past it
	// the call fails with UNAVAILABLE.
	RequestTimeout time.Duration
	// LogNow estimates the current log time (Unix nanoseconds), which is
	// what a waiting Claim's lease-end timer waits for (default: the wall
	// clock).
	LogNow func() int64
	// IsLeader reports whether this node leads. When set, the leader
	// answers a Claim that would change nothing (a COMPLETED record, a live
	// lease, a fingerprint mismatch) with a linearizable read instead of a
	// log write; nil turns that off.
	IsLeader func() bool
	// MaxWaitingClaims caps the Claims with a wait waiting on this node at
	// once (default 1024), MaxWaitingClaimsPerNamespace those of one
	// namespace (default 256); negative: no cap. Beyond: RESOURCE_EXHAUSTED
	// with RetryInfo.
	MaxWaitingClaims, MaxWaitingClaimsPerNamespace int
	// NamespaceRate is the operations per second each namespace may make
	// on this node (a token bucket of NamespaceBurst, default the rate);
	// 0: unlimited. Beyond: RESOURCE_EXHAUSTED with RetryInfo.
	NamespaceRate  float64
	NamespaceBurst int
	// MaxNamespaceRecords and MaxNamespaceBytes are each namespace's
	// quota of stored records and of their bytes (0: none), judged by
	// Usage on the node that takes the request: a Claim that would create
	// a record past the first, or a Complete whose response would pass the
	// second, gets RESOURCE_EXHAUSTED. Retries of existing records always
	// go through. Requests in flight may overshoot a quota by a little.
	MaxNamespaceRecords, MaxNamespaceBytes int64
	// Usage reports what a namespace holds (records, bytes) as of this
	// node's applied state; needed by the quotas.
	Usage func(namespace string) (records, bytes int64)
	// Metrics, if set, counts the answers per namespace (metrics.go).
	Metrics *Metrics
	// Access decides per call which namespaces the caller may use and
	// whether it sees live claims' tokens; nil: every namespace, no live
	// tokens (authorization off).
	Access Access
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
}

// Limits the contract fixes: configuration may lower the maxima, not raise
// them past these.
const (
	maxNamespaceLen   = 64
	maxKeyLen         = 255
	maxFingerprintLen = 64
	maxOwnerLen       = 256
	contractMaxLease  = time.Hour
)

// Validate reports a configuration error.
func (c Config) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.MaxLease > contractMaxLease:
		return errors.New("api: MaxLease must be at most 1h (docs/contract.md)")
	case c.DefaultLease <= 0 || c.DefaultLease > c.MaxLease:
		return errors.New("api: DefaultLease must be in (0, MaxLease]")
	case c.MaxRetention > maxRetentionCeiling:
		return fmt.Errorf("api: MaxRetention must be at most %s", maxRetentionCeiling)
	case c.DefaultRetention <= 0 || c.DefaultRetention > c.MaxRetention:
		return errors.New("api: DefaultRetention must be in (0, MaxRetention]")
	case c.MaxBodyBytes <= 0 || c.MaxMetadataBytes <= 0:
		return errors.New("api: MaxBodyBytes and MaxMetadataBytes must be positive")
	case c.MaxBodyBytes+c.MaxMetadataBytes > MaxEntryBytes:
		return fmt.Errorf("api: MaxBodyBytes + MaxMetadataBytes must be at most %d (a record travels in one raft frame)", MaxEntryBytes)
	case (c.MaxNamespaceRecords > 0 || c.MaxNamespaceBytes > 0) && c.Usage == nil:
		return errors.New("api: namespace quotas need Usage")
	case c.RequestTimeout <= 0 || c.MaxWait < 0:
		return errors.New("api: RequestTimeout must be positive and MaxWait not negative")
	}
	return nil
}

// MaxEntryBytes bounds what one stored response may hold (body and
// metadata), so that its log entry fits a peer frame
// (raftnode.MaxMessageBytes) with room for a batch beside it.
const MaxEntryBytes = 32 << 20

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&c.DefaultLease, 30*time.Second)
	set(&c.MaxLease, contractMaxLease)
	set(&c.DefaultRetention, 24*time.Hour)
	set(&c.MaxRetention, 30*24*time.Hour)
	set(&c.MaxWait, time.Hour)
	set(&c.RequestTimeout, 5*time.Second)
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.MaxWaitingClaims == 0 {
		c.MaxWaitingClaims = 1024
	}
	if c.MaxWaitingClaimsPerNamespace == 0 {
		c.MaxWaitingClaimsPerNamespace = 256
	}
	if c.MaxMetadataBytes == 0 {
		c.MaxMetadataBytes = 64 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.LogNow == nil {
		c.LogNow = func() int64 { return time.Now().UnixNano() }
	}
	return c
}

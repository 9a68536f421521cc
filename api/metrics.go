package api

import (
	"errors"
	"sync"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// OtherNamespaces is the namespace label of every namespace past the cap
// of Metrics (parentheses are not allowed in a namespace, so it names
// none).
const OtherNamespaces = "(other)"

// DefaultMetricsNamespaces is how many namespaces Metrics labels by name
// unless told otherwise.
const DefaultMetricsNamespaces = 100

// Metrics counts what the API answered, per namespace: the dedup hits and
// misses an operator of an idempotency store watches. It is a
// prometheus.Collector. The first MaxNamespaces namespaces seen get their
// own label value; later ones share OtherNamespaces, so a caller inventing
// namespaces cannot grow the series without bound.
//
// Counts are of answers this node gave (the node that took the call, a
// follower forwarding included), so a cluster's totals are the sum over
// its nodes.
type Metrics struct {
	claims      *prometheus.CounterVec
	lost        *prometheus.CounterVec
	completions *prometheus.CounterVec
	releases    *prometheus.CounterVec
	waits       *prometheus.HistogramVec
	ops         *prometheus.HistogramVec

	max   int
	mu    sync.RWMutex
	names map[string]struct{}
}

// Claim outcomes, the values of keystore_claims_total's outcome label.
const (
	// OutcomeAcquired: a first attempt; the caller runs the side effect.
	OutcomeAcquired = "acquired"
	// OutcomeTakeover: acquired after an earlier attempt's lease ended
	// or it was released; the side effect may have half happened.
	OutcomeTakeover = "takeover"
	// OutcomeInProgress: another attempt holds the key.
	OutcomeInProgress = "in_progress"
	// OutcomeCompleted: a replay of the stored response (a dedup hit).
	OutcomeCompleted = "completed"
	// OutcomeFingerprintMismatch: the key was claimed with other content.
	OutcomeFingerprintMismatch = "fingerprint_mismatch"
)

// NewMetrics returns Metrics labelling at most maxNamespaces namespaces by
// name (DefaultMetricsNamespaces when 0 or less).
func NewMetrics(maxNamespaces int) *Metrics {
	if maxNamespaces <= 0 {
		maxNamespaces = DefaultMetricsNamespaces
	}
	ns := []string{"namespace"}
	return &Metrics{
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keystore_claims_total",
			Help: "Claims answered by this node, by namespace and outcome: acquired (first attempt), takeover (acquired after an earlier attempt's lease ended or it was released), in_progress, completed (a replay of the stored response: a dedup hit), fingerprint_mismatch.",
		}, []string{"namespace", "outcome"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keystore_claims_lost_total",
			Help: "Complete, Heartbeat and Release calls answered ABORTED (CLAIM_LOST): the caller's token was no longer the record's, usually because its lease ended and another attempt took over.",
		}, []string{"namespace", "op"}),
		completions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keystore_completions_total",
			Help: "Completes that stored a response.",
		}, ns),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keystore_releases_total",
			Help: "Releases that gave a claim up.",
		}, ns),
		waits: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keystore_claim_wait_seconds",
			Help:    "How long Claims that asked to wait (wait > 0) waited for their answer; the count is the number of such Claims.",
			Buckets: []float64{.005, .025, .1, .25, 1, 2.5, 10, 30, 60, 300},
		}, ns),
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keystore_operation_duration_seconds",
			Help:    "How long this node took to answer each Claim, Complete, Release and Heartbeat, by operation and gRPC code, however it came (a unary call, or one operation of a Batch or Stream: the Go client sends its writes on a Stream, which the RPC metrics time as a whole). A Claim that asked to wait includes its wait.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"op", "code"}),
		max:   maxNamespaces,
		names: make(map[string]struct{}),
	}
}

// Label returns the label value for namespace ns: ns itself while fewer
// than the cap have been seen, OtherNamespaces after.
func (m *Metrics) Label(ns string) string {
	m.mu.RLock()
	_, ok := m.names[ns]
	full := len(m.names) >= m.max
	m.mu.RUnlock()
	if ok {
		return ns
	}
	if full {
		return OtherNamespaces
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.names[ns]; ok || len(m.names) < m.max {
		m.names[ns] = struct{}{}
		return ns
	}
	return OtherNamespaces
}

// MaxNamespaces is the cap on namespaces labelled by name.
func (m *Metrics) MaxNamespaces() int { return m.max }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.claims.Describe(ch)
	m.lost.Describe(ch)
	m.completions.Describe(ch)
	m.releases.Describe(ch)
	m.waits.Describe(ch)
	m.ops.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.claims.Collect(ch)
	m.lost.Collect(ch)
	m.completions.Collect(ch)
	m.releases.Collect(ch)
	m.waits.Collect(ch)
	m.ops.Collect(ch)
}

// claimed counts a Claim's answer, or the error it got.
func (m *Metrics) claimed(ns string, resp *keystorev1.ClaimResponse, err error) {
	if m == nil {
		return
	}
	var outcome string
	switch {
	case err != nil:
		if errorReason(err) != ReasonFingerprintMismatch {
			return // not an answer about the key: the RPC metrics count it
		}
		outcome = OutcomeFingerprintMismatch
	case resp.GetOutcome() == keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED && resp.GetRecord().GetAttempt() > 1:
		outcome = OutcomeTakeover
	case resp.GetOutcome() == keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED:
		outcome = OutcomeAcquired
	case resp.GetOutcome() == keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS:
		outcome = OutcomeInProgress
	case resp.GetOutcome() == keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED:
		outcome = OutcomeCompleted
	default:
		return
	}
	m.claims.WithLabelValues(m.Label(ns), outcome).Inc()
}

// timed observes how long operation op took to answer err.
func (m *Metrics) timed(op string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.ops.WithLabelValues(op, status.Code(err).String()).Observe(time.Since(start).Seconds())
}

// waited observes a waiting Claim's wait.
func (m *Metrics) waited(ns string, d time.Duration) {
	if m == nil {
		return
	}
	m.waits.WithLabelValues(m.Label(ns)).Observe(d.Seconds())
}

// done counts the answer of a Complete, Heartbeat or Release (op).
func (m *Metrics) done(op, ns string, err error) {
	if m == nil {
		return
	}
	switch {
	case err == nil && op == "complete":
		m.completions.WithLabelValues(m.Label(ns)).Inc()
	case err == nil && op == "release":
		m.releases.WithLabelValues(m.Label(ns)).Inc()
	case err != nil && errorReason(err) == ReasonClaimLost:
		m.lost.WithLabelValues(m.Label(ns), op).Inc()
	}
}

// errorReason returns the ErrorInfo reason of a status error, "" if none.
func errorReason(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return ""
	}
	for _, d := range se.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

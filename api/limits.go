package api

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Reasons of RESOURCE_EXHAUSTED answers (ErrorInfo), each with a RetryInfo:
// waiting helps.
const (
	ReasonRateLimited    = "RATE_LIMITED"
	ReasonTooManyWaiting = "TOO_MANY_WAITING"
	ReasonQuotaExceeded  = "QUOTA_EXCEEDED"
)

// quotaRetry is the RetryInfo delay of a quota refusal: records leave a
// namespace as they expire (swept every second) or are released.
const quotaRetry = time.Second

// checkRecordQuota refuses a Claim of a key that has no record when the
// namespace holds its quota of records already.
func (s *service) checkRecordQuota(ns, key string) error {
	max := s.cfg.MaxNamespaceRecords
	if max <= 0 {
		return nil
	}
	if records, _ := s.cfg.Usage(ns); records < max {
		return nil
	}
	if _, _, err := s.store.Get(ns, key); err == nil {
		return nil // a retry of a record it holds, or a takeover
	}
	return exhausted(fmt.Sprintf("namespace %q holds its quota of %d records (--namespace-max-records)", ns, max), ReasonQuotaExceeded, quotaRetry)
}

// checkBytesQuota refuses a Complete whose response would take the
// namespace past its quota of bytes.
func (s *service) checkBytesQuota(ns string, add int) error {
	max := s.cfg.MaxNamespaceBytes
	if max <= 0 {
		return nil
	}
	if _, bytes := s.cfg.Usage(ns); bytes+int64(add) <= max {
		return nil
	}
	return exhausted(fmt.Sprintf("namespace %q would pass its quota of %d bytes (--namespace-max-bytes)", ns, max), ReasonQuotaExceeded, quotaRetry)
}

// maxTrackedNamespaces bounds the rate limiters kept: past it they start
// over (a caller inventing namespaces must not grow the node's memory).
const maxTrackedNamespaces = 10_000

// limiter enforces the per-node limits of Config: each namespace's
// operation rate (a token bucket) and the Claims waiting at once, in all
// and per namespace.
type limiter struct {
	rate               rate.Limit
	burst              int
	maxWaiting, maxNS  int
	mu                 sync.Mutex
	buckets            map[string]*rate.Limiter
	waiting            int
	waitingByNamespace map[string]int
}

func newLimiter(cfg Config) *limiter {
	l := &limiter{maxWaiting: cfg.MaxWaitingClaims, maxNS: cfg.MaxWaitingClaimsPerNamespace,
		buckets: map[string]*rate.Limiter{}, waitingByNamespace: map[string]int{}}
	if cfg.NamespaceRate > 0 {
		l.rate, l.burst = rate.Limit(cfg.NamespaceRate), max(cfg.NamespaceBurst, int(cfg.NamespaceRate), 1)
	}
	return l
}

// admit takes one operation of namespace ns from its bucket, or answers
// RESOURCE_EXHAUSTED with the time until the bucket has one again.
func (l *limiter) admit(ns string) error {
	if l.rate == 0 {
		return nil
	}
	l.mu.Lock()
	b, ok := l.buckets[ns]
	if !ok {
		if len(l.buckets) >= maxTrackedNamespaces {
			clear(l.buckets)
		}
		b = rate.NewLimiter(l.rate, l.burst)
		l.buckets[ns] = b
	}
	l.mu.Unlock()
	if b.Allow() {
		return nil
	}
	// The time until the bucket holds a token again.
	d := time.Duration((1 - b.Tokens()) / float64(l.rate) * float64(time.Second))
	return exhausted(fmt.Sprintf("namespace %q is over its rate of %g operations/s on this node (--namespace-rate, burst %d)", ns, float64(l.rate), l.burst), ReasonRateLimited, max(d, time.Millisecond))
}

// startWaiting counts a Claim that will wait, or refuses it when the node
// or its namespace has as many waiting as allowed; done uncounts it.
func (l *limiter) startWaiting(ns string) (done func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.maxNS > 0 && l.waitingByNamespace[ns] >= l.maxNS:
		return nil, exhausted(fmt.Sprintf("too many waiting Claims in namespace %q on this node: %d (--max-waiting-claims-per-namespace)", ns, l.maxNS), ReasonTooManyWaiting, time.Second)
	case l.maxWaiting > 0 && l.waiting >= l.maxWaiting:
		return nil, exhausted(fmt.Sprintf("too many waiting Claims on this node: %d (--max-waiting-claims)", l.maxWaiting), ReasonTooManyWaiting, time.Second)
	}
	l.waiting++
	l.waitingByNamespace[ns]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.waiting--
		if l.waitingByNamespace[ns]--; l.waitingByNamespace[ns] == 0 {
			delete(l.waitingByNamespace, ns)
		}
	}, nil
}

// exhausted is a RESOURCE_EXHAUSTED status with its reason and the delay
// after which a retry may succeed.
func exhausted(msg, reason string, retry time.Duration) error {
	st, err := status.New(codes.ResourceExhausted, msg).WithDetails(
		&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	if err != nil {
		return status.Error(codes.ResourceExhausted, msg)
	}
	return st.Err()
}

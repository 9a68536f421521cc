package client

import (
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// Outcome says what a Claim found.
type Outcome int

// Claim outcomes.
const (
	// Acquired: the caller holds the claim; ClaimResult.Token fences it.
	Acquired Outcome = iota + 1
	// InProgress: another caller holds a live claim.
	InProgress
	// Completed: the operation completed earlier; the record carries its
	// response.
	Completed
)

func (o Outcome) String() string {
	switch o {
	case Acquired:
		return "ACQUIRED"
	case InProgress:
		return "IN_PROGRESS"
	case Completed:
		return "COMPLETED"
	}
	return "UNKNOWN"
}

// State is a record's lifecycle state.
type State int

// Record states.
const (
	StateInProgress State = iota + 1
	StateCompleted
)

func (s State) String() string {
	switch s {
	case StateInProgress:
		return "IN_PROGRESS"
	case StateCompleted:
		return "COMPLETED"
	}
	return "UNKNOWN"
}

// Response is what a protected operation returned, replayed to retries.
type Response struct {
	// Code is an HTTP status or a gRPC code.
	Code int32
	// Metadata holds headers or trailers.
	Metadata map[string]string
	// Body is at most 1 MiB by default.
	Body []byte
}

// Record is the stored state of one key. Times are the cluster's log time.
type Record struct {
	Namespace      string
	Key            string
	State          State
	Fingerprint    []byte
	Token          uint64
	Attempt        uint32
	Owner          string
	CreatedAt      time.Time
	LeaseExpiresAt time.Time
	CompletedAt    time.Time // zero until completed
	ExpiresAt      time.Time
	// Response is set when State is StateCompleted.
	Response *Response
}

// ClaimResult is the answer to a Claim.
type ClaimResult struct {
	Outcome Outcome
	// Token is set when Outcome is Acquired.
	Token  uint64
	Record *Record
}

func fromRecord(r *keystorev1.Record) *Record {
	if r == nil {
		return nil
	}
	out := &Record{
		Namespace:   r.GetNamespace(),
		Key:         r.GetKey(),
		Fingerprint: r.GetFingerprint(),
		Token:       r.GetToken(),
		Attempt:     r.GetAttempt(),
		Owner:       r.GetOwner(),
	}
	switch r.GetState() {
	case keystorev1.RecordState_RECORD_STATE_IN_PROGRESS:
		out.State = StateInProgress
	case keystorev1.RecordState_RECORD_STATE_COMPLETED:
		out.State = StateCompleted
	}
	if t := r.GetCreatedAt(); t != nil {
		out.CreatedAt = t.AsTime()
	}
	if t := r.GetLeaseExpiresAt(); t != nil {
		out.LeaseExpiresAt = t.AsTime()
	}
	if t := r.GetCompletedAt(); t != nil {
		out.CompletedAt = t.AsTime()
	}
	if t := r.GetExpiresAt(); t != nil {
		out.ExpiresAt = t.AsTime()
	}
	if resp := r.GetResponse(); resp != nil {
		out.Response = &Response{Code: resp.GetCode(), Metadata: resp.GetMetadata(), Body: resp.GetBody()}
	}
	return out
}

func toResponse(r Response) *keystorev1.Response {
	return &keystorev1.Response{Code: r.Code, Metadata: r.Metadata, Body: r.Body}
}

func fromOutcome(o keystorev1.ClaimOutcome) Outcome {
	switch o {
	case keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED:
		return Acquired
	case keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS:
		return InProgress
	case keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED:
		return Completed
	}
	return 0
}

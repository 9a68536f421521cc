// Package history is the record of what the fault tests' clients asked and
// were told: one Op per call, with the wall-clock interval in which it was
// in flight and what it returned. Checkers judge a run from its history
// alone, so a failing run can be saved as JSON and judged again.
package history

import (
	"encoding/json"
	"os"
	"sync"
	"time"
)

// Kind is the RPC an Op made.
type Kind string

// Kinds.
const (
	Claim     Kind = "claim"
	Complete  Kind = "complete"
	Release   Kind = "release"
	Heartbeat Kind = "heartbeat"
	Get       Kind = "get"
)

// Result classes. An Op whose result is Indeterminate may or may not have
// taken effect (a timeout, UNAVAILABLE after the request was sent): a
// checker must treat it as open-ended.
const (
	OK                  = "OK"
	ClaimLost           = "CLAIM_LOST"
	FingerprintMismatch = "FINGERPRINT_MISMATCH"
	AlreadyCompleted    = "ALREADY_COMPLETED"
	NotFound            = "NOT_FOUND"
	Indeterminate       = "INDETERMINATE"
)

// Record is a record as a response showed it. Times are log time, Unix
// nanoseconds; zero when unset.
type Record struct {
	State          string `json:"state"` // IN_PROGRESS or COMPLETED
	Fingerprint    []byte `json:"fingerprint,omitempty"`
	Token          uint64 `json:"token"`
	Attempt        uint32 `json:"attempt"`
	Owner          string `json:"owner,omitempty"`
	CreatedAt      int64  `json:"created_at"`
	LeaseExpiresAt int64  `json:"lease_expires_at"`
	CompletedAt    int64  `json:"completed_at,omitempty"`
	ExpiresAt      int64  `json:"expires_at"`
	ResponseCode   int32  `json:"response_code,omitempty"`
	ResponseBody   []byte `json:"response_body,omitempty"`
}

// Op is one call and its outcome.
type Op struct {
	ID     int    `json:"id"`
	Client int    `json:"client"`
	Node   string `json:"node"` // the node the client sent it to
	Kind   Kind   `json:"kind"`
	Key    string `json:"key"` // one namespace per run; keys are unique within it

	// Inputs.
	Fingerprint  []byte        `json:"fingerprint,omitempty"`
	Lease        time.Duration `json:"lease,omitempty"`     // Claim, Heartbeat
	Retention    time.Duration `json:"retention,omitempty"` // Claim
	Token        uint64        `json:"token,omitempty"`     // Complete, Release, Heartbeat
	ResponseCode int32         `json:"response_code,omitempty"`
	ResponseBody []byte        `json:"response_body,omitempty"` // Complete
	Stale        bool          `json:"stale,omitempty"`         // Get with CONSISTENCY_STALE

	// When: wall-clock Unix nanoseconds of the test process.
	Call   int64 `json:"call"`
	Return int64 `json:"return"`

	// Outputs.
	Result  string  `json:"result"`
	Outcome string  `json:"outcome,omitempty"` // Claim: ACQUIRED, IN_PROGRESS, COMPLETED
	Record  *Record `json:"record,omitempty"`
	Error   string  `json:"error,omitempty"` // the error's text, for people
}

// Log collects Ops from concurrent clients.
type Log struct {
	mu  sync.Mutex
	ops []Op
}

// Add appends op, numbering it, and returns its id.
func (l *Log) Add(op Op) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	op.ID = len(l.ops)
	l.ops = append(l.ops, op)
	return op.ID
}

// Ops returns a copy of the history.
func (l *Log) Ops() []Op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Op(nil), l.ops...)
}

// Save writes ops as JSON.
func Save(path string, ops []Op) error {
	b, err := json.MarshalIndent(ops, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Load reads a history saved by Save.
func Load(path string) ([]Op, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ops []Op
	return ops, json.Unmarshal(b, &ops)
}

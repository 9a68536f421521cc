package api

import (
	"context"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// Access decides what the caller of an operation may do. The server backs
// it with its authorization policy (package auth), which its interceptors
// attach to every call's context; every operation, including each one
// inside a Batch or Stream, asks it on its own.
type Access interface {
	// CheckNamespace returns nil if the caller may use namespace, else the
	// status error to answer (PERMISSION_DENIED).
	CheckNamespace(ctx context.Context, namespace string) error
	// SeesLiveTokens reports whether the caller may read the token of a
	// live claim it does not hold (an admin's Get).
	SeesLiveTokens(ctx context.Context) bool
}

// openAccess is the Access without authorization: every caller may use
// every namespace, and nobody but a claim's holder sees its live token.
type openAccess struct{}

func (openAccess) CheckNamespace(context.Context, string) error { return nil }
func (openAccess) SeesLiveTokens(context.Context) bool          { return false }

// hideLiveToken clears the token of an IN_PROGRESS record in an answer to
// someone other than its holder (docs/contract.md, Security): with the
// token, any caller could Complete, Release or Heartbeat the claim of
// another. A completed record's token stays visible.
func hideLiveToken(r *keystorev1.Record) {
	if r != nil && r.GetState() == keystorev1.RecordState_RECORD_STATE_IN_PROGRESS {
		r.Token = 0
	}
}

package grpcidem

import (
	"context"
	"errors"

	"github.com/keystore-dev/keystore/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// This file is the one place where handler codes are classified and
// keystore's errors become the caller's statuses. The messages are all a
// caller sees: no text of the store's errors passes through.

// Statuses of the interceptor's own failures.
var (
	errInProgress       = status.Error(codes.Aborted, "another call with this idempotency key is in progress; retry later")
	errKeyReused        = status.Error(codes.FailedPrecondition, "idempotency key was already used for a different request")
	errClaimLost        = status.Error(codes.Aborted, "idempotency claim was lost before the call finished; retry with the same key")
	errStoreUnavailable = status.Error(codes.Unavailable, "idempotency store unavailable")
	errStore            = status.Error(codes.Internal, "idempotency store error")
	errUnreadable       = status.Error(codes.Internal, "stored response for this idempotency key cannot be read")
	errUnauthenticated  = status.Error(codes.Unauthenticated, "calls with an idempotency key must identify their caller")
	errEmptyScope       = status.Error(codes.Internal, "idempotency scope of this call is empty")
)

// isTransient reports whether a handler's status code may change on a
// retry, so its outcome must not be stored and the claim is released.
func isTransient(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted,
		codes.Canceled, codes.Internal, codes.Unknown:
		return true
	}
	// NB: OK is not an error code; an error that claims it is malformed, so
	// not worth storing either.
	return c == codes.OK
}

func isClaimLost(err error) bool { return errors.Is(err, client.ErrClaimLost) }

// storeError maps an error of client.Do (not the handler's) to the status
// the caller gets.
func storeError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, client.ErrInProgress):
		return errInProgress
	case errors.Is(err, client.ErrFingerprintMismatch):
		return errKeyReused
	case errors.Is(err, client.ErrClaimLost):
		return errClaimLost
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		// The caller is still there: the store's nodes did not answer in
		// time.
		return errStoreUnavailable
	default:
		return errStore
	}
}

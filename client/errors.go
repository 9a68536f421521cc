package client

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors. Each error a call returns wraps one of these (test with
// errors.Is) and, when the server answered, the gRPC status too (status.
// FromError still works on it).
var (
	// ErrFingerprintMismatch: the key was claimed with another fingerprint,
	// i.e. for a different request. Nothing changed.
	ErrFingerprintMismatch = errors.New("keystore: fingerprint mismatch")
	// ErrClaimLost: the token is no longer the key's current one (a
	// takeover fenced it, or the record is gone). Do not retry the write;
	// Claim again to learn what happened.
	ErrClaimLost = errors.New("keystore: claim lost")
	// ErrInProgress: another caller holds a live claim (returned by Do when
	// its wait for that claim ran out).
	ErrInProgress = errors.New("keystore: in progress elsewhere")
	// ErrAlreadyCompleted: Release or Heartbeat on a completed record.
	ErrAlreadyCompleted = errors.New("keystore: already completed")
	// ErrNotFound: Get of an absent or expired record.
	ErrNotFound = errors.New("keystore: not found")
	// ErrInvalidArgument: the server refused the request's fields; the
	// wrapped status carries a BadRequest naming them.
	ErrInvalidArgument = errors.New("keystore: invalid argument")
	// ErrUnavailable: no node answered with a quorum before the deadline.
	ErrUnavailable = errors.New("keystore: unavailable")
	// ErrUnauthenticated: the server accepted no credential of the call
	// (Config.Token, Config.TokenFile, a client certificate in Config.TLS).
	// Not retried.
	ErrUnauthenticated = errors.New("keystore: unauthenticated")
	// ErrPermissionDenied: the credential is not granted the namespace, or
	// the call. Not retried.
	ErrPermissionDenied = errors.New("keystore: permission denied")
)

// errorDomain is the ErrorInfo domain of keystore's errors.
const errorDomain = "keystore"

// ErrorInfo reasons that fromStatus maps to the errors above, as
// docs/contract.md spells them.
const (
	reasonFingerprintMismatch = "FINGERPRINT_MISMATCH"
	reasonClaimLost           = "CLAIM_LOST"
	reasonAlreadyCompleted    = "ALREADY_COMPLETED"
)

// fromStatus maps an error of a gRPC call to the package's errors. This is
// the only place that reads codes and reasons.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	reason := ""
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain {
			reason = info.GetReason()
		}
	}
	var sentinel error
	switch {
	case reason == reasonFingerprintMismatch:
		sentinel = ErrFingerprintMismatch
	case reason == reasonClaimLost:
		sentinel = ErrClaimLost
	case reason == reasonAlreadyCompleted:
		sentinel = ErrAlreadyCompleted
	case st.Code() == codes.NotFound:
		sentinel = ErrNotFound
	case st.Code() == codes.InvalidArgument:
		sentinel = ErrInvalidArgument
	case st.Code() == codes.Unavailable:
		sentinel = ErrUnavailable
	case st.Code() == codes.Unauthenticated:
		sentinel = ErrUnauthenticated
	case st.Code() == codes.PermissionDenied:
		sentinel = ErrPermissionDenied
	case st.Code() == codes.Canceled:
		return fmt.Errorf("%w: %w", context.Canceled, err)
	case st.Code() == codes.DeadlineExceeded:
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	default:
		return err
	}
	return fmt.Errorf("%w: %w", sentinel, err)
}

// retryable reports whether a failed attempt may be tried again, on another
// node: the node or its quorum was unreachable, or the attempt's own timeout
// (not the caller's) ran out.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

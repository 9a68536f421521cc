package api

import (
	"context"
	"errors"
	"fmt"
	"github.com/keystore-dev/keystore/rules"
	"log/slog"

	"github.com/keystore-dev/keystore/raftnode"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the ErrorInfo domain of every keystore error.
const ErrorDomain = "keystore"

// ErrorInfo reasons.
const (
	ReasonFingerprintMismatch = "FINGERPRINT_MISMATCH"
	ReasonClaimLost           = "CLAIM_LOST"
	ReasonAlreadyCompleted    = "ALREADY_COMPLETED"
	ReasonNotFound            = "NOT_FOUND"
	ReasonNoQuorum            = "NO_QUORUM"
	ReasonOverloaded          = "OVERLOADED"
	ReasonInvalidArgument     = "INVALID_ARGUMENT"
)

// errorStatus maps an error from the layers below to the gRPC status the
// caller sees. This is the only place such mapping happens. Errors it does
// not know become INTERNAL with a fixed message: their text stays in the
// server's log.
func errorStatus(logger *slog.Logger, err error) error {
	switch {
	case errors.Is(err, rules.ErrNotFound):
		return withInfo(codes.NotFound, "record not found", ReasonNotFound)
	case errors.Is(err, rules.ErrFingerprintMismatch):
		return withInfo(codes.FailedPrecondition, "fingerprint differs from the one the key was claimed with", ReasonFingerprintMismatch)
	case errors.Is(err, rules.ErrClaimLost):
		return withInfo(codes.Aborted, "the claim is lost: the token is not the record's current one, or the record is gone; claim again to learn what happened", ReasonClaimLost)
	case errors.Is(err, rules.ErrAlreadyCompleted):
		return withInfo(codes.FailedPrecondition, "the record is already completed", ReasonAlreadyCompleted)
	case errors.Is(err, raftnode.ErrTimeout), errors.Is(err, raftnode.ErrStopped):
		return withInfo(codes.Unavailable, "no quorum within the deadline; retry", ReasonNoQuorum)
	case errors.Is(err, raftnode.ErrOverloaded):
		// UNAVAILABLE, not RESOURCE_EXHAUSTED: the cause is the cluster's
		// (a stalled or slow quorum), not the caller's quota, and it
		// passes. keystore's client retries UNAVAILABLE with jittered
		// backoff (ErrUnavailable); RESOURCE_EXHAUSTED it would hand back
		// unmapped, not retried. The reason tells it from NO_QUORUM.
		return withInfo(codes.Unavailable, "the cluster is overloaded: no quorum keeps up with writes; retry with backoff", ReasonOverloaded)
	case errors.Is(err, raftnode.ErrRefused):
		// The node validated the request; the leader, judging by the
		// contract's ceilings (CheckCommand), did not: a forged forward,
		// or a node configured past them.
		return withInfo(codes.InvalidArgument, "invalid request: refused by the leader", ReasonInvalidArgument)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	logger.Error("internal error", "err", err)
	return status.Error(codes.Internal, "internal error")
}

func withInfo(code codes.Code, msg, reason string) error {
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain})
	if err != nil {
		return status.Error(code, msg)
	}
	return st.Err()
}

// fieldError is one violated field rule.
type fieldError struct{ field, desc string }

// invalidArgument builds the INVALID_ARGUMENT status for violations, with
// a BadRequest detail naming every field and an ErrorInfo.
func invalidArgument(violations []fieldError) error {
	msg := "invalid request: " + violations[0].field + ": " + violations[0].desc
	if len(violations) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(violations)-1)
	}
	br := &errdetails.BadRequest{}
	for _, v := range violations {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.field, Description: v.desc})
	}
	st, err := status.New(codes.InvalidArgument, msg).WithDetails(br, &errdetails.ErrorInfo{Reason: ReasonInvalidArgument, Domain: ErrorDomain})
	if err != nil {
		return status.Error(codes.InvalidArgument, msg)
	}
	return st.Err()
}

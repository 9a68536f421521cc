package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/keystore-dev/keystore/client"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors of the membership calls, which keystorectl makes itself (the
// client package makes the others); fromClusterStatus returns them.
var (
	// errRefused: the cluster refused a membership change
	// (FAILED_PRECONDITION); the server's message says why.
	errRefused = errors.New("keystorectl: refused")
	// errExists: the member to add exists already (ALREADY_EXISTS).
	errExists = errors.New("keystorectl: already exists")
	// errUnsupported: the server does not know the call (UNIMPLEMENTED).
	errUnsupported = errors.New("keystorectl: not supported by the server")
)

// errorKinds name the client's sentinels in messages, most specific first.
var errorKinds = []struct {
	err  error
	kind string
}{
	{errRefused, "refused"},
	{errExists, "already exists"},
	{errUnsupported, "not supported by the server"},
	{client.ErrClaimLost, "claim lost"},
	{client.ErrFingerprintMismatch, "fingerprint mismatch"},
	{client.ErrAlreadyCompleted, "already completed"},
	{client.ErrInProgress, "in progress elsewhere"},
	{client.ErrNotFound, "not found"},
	{client.ErrInvalidArgument, "invalid argument"},
	{client.ErrUnavailable, "unavailable"},
	{context.DeadlineExceeded, "timed out"},
	{context.Canceled, "canceled"},
}

// codeKinds name the refusals of the caller's credentials by their gRPC
// code, which the client and fromClusterStatus keep in the errors they
// return.
var codeKinds = map[codes.Code]string{
	codes.Unauthenticated:  "unauthenticated",
	codes.PermissionDenied: "permission denied",
}

// describe turns an error of a call into one line: what kind of failure it
// is, then the server's words (every field a BadRequest names), e.g.
// "claim lost: the claim is lost: ...".
func describe(err error) string {
	if err == nil {
		return "no answer"
	}
	kind := codeKinds[status.Code(err)]
	for _, k := range errorKinds {
		if kind == "" && errors.Is(err, k.err) {
			kind = k.kind
		}
	}
	detail := err.Error()
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		st := se.GRPCStatus()
		detail = st.Message()
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
				var parts []string
				for _, v := range br.GetFieldViolations() {
					parts = append(parts, v.GetField()+": "+v.GetDescription())
				}
				detail = strings.Join(parts, "; ")
			}
		}
	} else if kind != "" {
		// The sentinel's own text ("keystore: claim lost") adds nothing to
		// the kind.
		for _, k := range errorKinds {
			detail = strings.TrimPrefix(detail, k.err.Error()+": ")
		}
	}
	detail = strings.Join(strings.Fields(detail), " ") // one line
	detail = strings.TrimPrefix(detail, kind+": ")     // "permission denied: permission denied: ..."
	switch {
	case kind == "":
		return detail
	case detail == "" || detail == kind:
		return kind
	}
	return kind + ": " + detail
}

// fromClusterStatus maps an error of a membership call to the sentinels
// above and the client's, keeping the gRPC status (describe prints its
// message). This is the only place that reads their codes.
func fromClusterStatus(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%w: %w", client.ErrUnavailable, err)
	}
	var sentinel error
	switch st.Code() {
	case codes.FailedPrecondition:
		sentinel = errRefused
	case codes.AlreadyExists:
		sentinel = errExists
	case codes.Unimplemented:
		sentinel = errUnsupported
	case codes.NotFound:
		sentinel = client.ErrNotFound
	case codes.InvalidArgument:
		sentinel = client.ErrInvalidArgument
	case codes.Unavailable:
		sentinel = client.ErrUnavailable
	case codes.Canceled:
		sentinel = context.Canceled
	case codes.DeadlineExceeded:
		sentinel = context.DeadlineExceeded
	default:
		return err
	}
	return fmt.Errorf("%w: %w", sentinel, err)
}

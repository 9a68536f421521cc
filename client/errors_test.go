package client

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func statusWith(code codes.Code, reason string) error {
	st := status.New(code, "server message")
	if reason != "" {
		st, _ = st.WithDetails(&errdetails.ErrorInfo{Domain: "keystore", Reason: reason})
	}
	return st.Err()
}

func TestFromStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   error
		want error
	}{
		{"fingerprint", statusWith(codes.FailedPrecondition, "FINGERPRINT_MISMATCH"), ErrFingerprintMismatch},
		{"claim lost", statusWith(codes.Aborted, "CLAIM_LOST"), ErrClaimLost},
		{"already completed", statusWith(codes.FailedPrecondition, "ALREADY_COMPLETED"), ErrAlreadyCompleted},
		{"not found", statusWith(codes.NotFound, "NOT_FOUND"), ErrNotFound},
		{"invalid", statusWith(codes.InvalidArgument, "INVALID_ARGUMENT"), ErrInvalidArgument},
		{"unavailable", statusWith(codes.Unavailable, "NO_QUORUM"), ErrUnavailable},
		{"unavailable without details", status.Error(codes.Unavailable, "connection refused"), ErrUnavailable},
		{"deadline", status.Error(codes.DeadlineExceeded, "x"), context.DeadlineExceeded},
		{"canceled", status.Error(codes.Canceled, "x"), context.Canceled},
		{"unauthenticated", status.Error(codes.Unauthenticated, "no credential"), ErrUnauthenticated},
		{"permission denied", status.Error(codes.PermissionDenied, "namespace not granted"), ErrPermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromStatus(tc.in)
			if !errors.Is(got, tc.want) {
				t.Fatalf("fromStatus(%v) = %v; want it to wrap %v", tc.in, got, tc.want)
			}
			if st, ok := status.FromError(got); ok && st.Code() != status.Code(tc.in) {
				t.Fatalf("wrapped status code %v; want %v", st.Code(), status.Code(tc.in))
			}
		})
	}
	other := status.Error(codes.Internal, "no")
	if got := fromStatus(other); got != other {
		t.Fatalf("fromStatus(INTERNAL) = %v; want the status unchanged", got)
	}
	if fromStatus(nil) != nil {
		t.Fatal("fromStatus(nil) != nil")
	}
}

func TestRetryableMarker(t *testing.T) {
	base := errors.New("timeout")
	err := Retryable(base)
	if !IsRetryable(err) || !errors.Is(err, base) {
		t.Fatalf("Retryable(%v): IsRetryable %v, Is(base) %v; want both", base, IsRetryable(err), errors.Is(err, base))
	}
	if IsRetryable(base) || Retryable(nil) != nil {
		t.Fatal("unmarked error reported retryable, or Retryable(nil) not nil")
	}
}

func TestFingerprintSeparatesParts(t *testing.T) {
	a := Fingerprint("POST", "/ab", []byte("c"))
	b := Fingerprint("POST", "/a", []byte("bc"))
	if string(a) == string(b) || len(a) != 32 {
		t.Fatalf("Fingerprint: %x vs %x; want distinct 32-byte hashes", a, b)
	}
	if string(a) != string(Fingerprint("POST", "/ab", []byte("c"))) {
		t.Fatal("Fingerprint is not deterministic")
	}
}

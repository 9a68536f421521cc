package grpcidem

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/keystore-dev/keystore/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestIsTransient(t *testing.T) {
	transient := map[codes.Code]bool{
		codes.Unavailable: true, codes.DeadlineExceeded: true, codes.Aborted: true, codes.ResourceExhausted: true,
		codes.Canceled: true, codes.Internal: true, codes.Unknown: true, codes.OK: true,
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if got := isTransient(c); got != transient[c] {
			t.Errorf("isTransient(%v) = %v; want %v", c, got, transient[c])
		}
	}
}

func TestStoreError(t *testing.T) {
	wrapped := func(sentinel error) error {
		return fmt.Errorf("%w: %w", sentinel, status.Error(codes.Unknown, "server detail that must not leak"))
	}
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"in progress", fmt.Errorf("%w: held by %q", client.ErrInProgress, "host:1"), codes.Aborted},
		{"fingerprint", wrapped(client.ErrFingerprintMismatch), codes.FailedPrecondition},
		{"claim lost", client.ErrClaimLost, codes.Aborted},
		{"unavailable", wrapped(client.ErrUnavailable), codes.Unavailable},
		{"store timed out", fmt.Errorf("%w: x", context.DeadlineExceeded), codes.Unavailable},
		{"invalid argument", wrapped(client.ErrInvalidArgument), codes.Internal},
		{"other", errors.New("boom"), codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := status.Convert(storeError(context.Background(), tc.err))
			if got.Code() != tc.want {
				t.Fatalf("storeError(%v) = %v; want %v", tc.err, got, tc.want)
			}
			if len(got.Details()) != 0 || strings.Contains(got.Message(), "server detail") || strings.Contains(got.Message(), "host:1") {
				t.Fatalf("storeError(%v) = %v; leaks the store's error", tc.err, got)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := status.Code(storeError(ctx, context.Canceled)); got != codes.Canceled {
		t.Fatalf("storeError after the caller left = %v; want %v", got, codes.Canceled)
	}
}

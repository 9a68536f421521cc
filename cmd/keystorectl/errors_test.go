package main

import (
	"context"
	"errors"
	"testing"

	"github.com/keystore-dev/keystore/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestFromClusterStatus(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		sentinel error // nil: none
		describe string
	}{
		{"refused", status.Error(codes.FailedPrecondition, "raftnode: membership change refused: 3c is the only voter"),
			errRefused, "refused: raftnode: membership change refused: 3c is the only voter"},
		{"exists", status.Error(codes.AlreadyExists, "a member is named n4"), errExists, "already exists: a member is named n4"},
		{"unimplemented", status.Error(codes.Unimplemented, "method MemberAdd not implemented"),
			errUnsupported, "not supported by the server: method MemberAdd not implemented"},
		{"not found", status.Error(codes.NotFound, "no member 3c"), client.ErrNotFound, "not found: no member 3c"},
		{"invalid", status.Error(codes.InvalidArgument, "id: not hex"), client.ErrInvalidArgument, "invalid argument: id: not hex"},
		{"unavailable", status.Error(codes.Unavailable, "no leader"), client.ErrUnavailable, "unavailable: no leader"},
		{"deadline", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), context.DeadlineExceeded, "timed out: context deadline exceeded"},
		{"canceled", status.Error(codes.Canceled, "context canceled"), context.Canceled, "canceled: context canceled"},
		{"context", context.DeadlineExceeded, context.DeadlineExceeded, "timed out: context deadline exceeded"},
		{"not a status", errors.New("dial failed"), client.ErrUnavailable, "unavailable: dial failed"},
		{"unauthenticated", status.Error(codes.Unauthenticated, "no credential"), nil, "unauthenticated: no credential"},
		{"permission denied", status.Error(codes.PermissionDenied, "admin calls are not granted to \"billing\""), nil,
			"permission denied: admin calls are not granted to \"billing\""},
		{"other code", status.Error(codes.Internal, "disk on fire"), nil, "disk on fire"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromClusterStatus(tc.err)
			if tc.sentinel != nil && !errors.Is(got, tc.sentinel) {
				t.Fatalf("fromClusterStatus(%v) = %v; want it to wrap %v", tc.err, got, tc.sentinel)
			}
			if st, ok := status.FromError(tc.err); ok && status.Code(got) != st.Code() {
				t.Fatalf("fromClusterStatus(%v) has code %v; want the status kept (%v)", tc.err, status.Code(got), st.Code())
			}
			if d := describe(got); d != tc.describe {
				t.Fatalf("describe(fromClusterStatus(%v)) = %q; want %q", tc.err, d, tc.describe)
			}
		})
	}
	if fromClusterStatus(nil) != nil {
		t.Fatal("fromClusterStatus(nil) != nil")
	}
}

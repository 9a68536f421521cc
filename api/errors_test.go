package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/keystore-dev/keystore/rules"
	"log/slog"
	"strings"
	"testing"

	"github.com/keystore-dev/keystore/raftnode"
	"github.com/keystore-dev/keystore/storage"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// statusDetails returns the ErrorInfo and BadRequest details of err's
// status, nil when absent.
func statusDetails(t *testing.T, err error) (*errdetails.ErrorInfo, *errdetails.BadRequest) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("status.FromError(%v): not a status error", err)
	}
	var (
		info *errdetails.ErrorInfo
		br   *errdetails.BadRequest
	)
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.BadRequest:
			br = d
		case error:
			t.Fatalf("undecodable status detail: %v", d)
		}
	}
	return info, br
}

func TestErrorStatus(t *testing.T) {
	const secret = "pebble: /var/lib/keystore/db/000042.sst: s3cr3t-t0ken"
	for _, tc := range []struct {
		name       string
		err        error
		wantCode   codes.Code
		wantReason string // "" means no ErrorInfo expected
	}{
		{"not found", storage.ErrNotFound, codes.NotFound, ReasonNotFound},
		{"fingerprint mismatch", rules.ErrFingerprintMismatch, codes.FailedPrecondition, ReasonFingerprintMismatch},
		{"claim lost", rules.ErrClaimLost, codes.Aborted, ReasonClaimLost},
		{"already completed", rules.ErrAlreadyCompleted, codes.FailedPrecondition, ReasonAlreadyCompleted},
		{"raft timeout", raftnode.ErrTimeout, codes.Unavailable, ReasonNoQuorum},
		{"raft stopped", raftnode.ErrStopped, codes.Unavailable, ReasonNoQuorum},
		{"raft overloaded", raftnode.ErrOverloaded, codes.Unavailable, ReasonOverloaded},
		{"wrapped overloaded", fmt.Errorf("propose: %w", raftnode.ErrOverloaded), codes.Unavailable, ReasonOverloaded},
		{"wrapped not found", fmt.Errorf("get: %w", storage.ErrNotFound), codes.NotFound, ReasonNotFound},
		{"wrapped fingerprint mismatch", fmt.Errorf("x: %w", rules.ErrFingerprintMismatch), codes.FailedPrecondition, ReasonFingerprintMismatch},
		{"wrapped claim lost", fmt.Errorf("x: %w", rules.ErrClaimLost), codes.Aborted, ReasonClaimLost},
		{"wrapped already completed", fmt.Errorf("x: %w", rules.ErrAlreadyCompleted), codes.FailedPrecondition, ReasonAlreadyCompleted},
		{"wrapped timeout", fmt.Errorf("propose: %w", raftnode.ErrTimeout), codes.Unavailable, ReasonNoQuorum},
		{"doubly wrapped stopped", fmt.Errorf("a: %w", fmt.Errorf("b: %w", raftnode.ErrStopped)), codes.Unavailable, ReasonNoQuorum},
		{"joined", errors.Join(errors.New("other"), rules.ErrClaimLost), codes.Aborted, ReasonClaimLost},
		{"canceled", context.Canceled, codes.Canceled, ""},
		{"wrapped canceled", fmt.Errorf("x: %w", context.Canceled), codes.Canceled, ""},
		{"deadline exceeded", context.DeadlineExceeded, codes.DeadlineExceeded, ""},
		{"invalid command", rules.ErrInvalidCommand, codes.Internal, ""},
		{"unknown", errors.New(secret), codes.Internal, ""},
		{"wrapped unknown", fmt.Errorf("apply: %w", errors.New(secret)), codes.Internal, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, nil))
			err := errorStatus(logger, tc.err)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("errorStatus(%v): got code %v; want %v", tc.err, got, tc.wantCode)
			}
			msg := status.Convert(err).Message()
			if strings.Contains(msg, "s3cr3t") || strings.Contains(msg, "/var/lib") {
				t.Errorf("errorStatus(%v): got message %q; want no internal error text", tc.err, msg)
			}
			if msg == "" {
				t.Errorf("errorStatus(%v): got empty message; want a description", tc.err)
			}
			if tc.wantReason == ReasonOverloaded && (!strings.Contains(msg, "overloaded") || strings.Contains(msg, "raftnode")) {
				t.Errorf("errorStatus(%v): got message %q; want it to say the cluster is overloaded, without internal text", tc.err, msg)
			}
			info, br := statusDetails(t, err)
			if br != nil {
				t.Errorf("errorStatus(%v): got BadRequest %v; want none", tc.err, br)
			}
			switch {
			case tc.wantReason == "" && info != nil:
				t.Errorf("errorStatus(%v): got ErrorInfo %v; want none", tc.err, info)
			case tc.wantReason != "" && info == nil:
				t.Errorf("errorStatus(%v): got no ErrorInfo; want reason %s", tc.err, tc.wantReason)
			case tc.wantReason != "":
				if info.GetDomain() != "keystore" || info.GetReason() != tc.wantReason {
					t.Errorf("errorStatus(%v): got ErrorInfo {domain %q, reason %q}; want {domain %q, reason %q}",
						tc.err, info.GetDomain(), info.GetReason(), "keystore", tc.wantReason)
				}
			}
			// An internal error's text goes to the server's log instead.
			if tc.wantCode == codes.Internal && !strings.Contains(logs.String(), tc.err.Error()) {
				t.Errorf("errorStatus(%v): got log %q; want it to contain the error text", tc.err, logs.String())
			}
		})
	}
}

func TestInvalidArgumentStatus(t *testing.T) {
	for _, tc := range []struct {
		name       string
		violations []fieldError
		wantMsg    []string
	}{
		{
			name:       "one",
			violations: []fieldError{{"namespace", "must be 1-64 characters (got 65)"}},
			wantMsg:    []string{"namespace", "64"},
		},
		{
			name: "three",
			violations: []fieldError{
				{"namespace", "must be 1-64 characters (got 0)"},
				{"key", "must be valid UTF-8"},
				{"token", "is required"},
			},
			wantMsg: []string{"namespace", "64", "2 more"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := invalidArgument(tc.violations)
			if got := status.Code(err); got != codes.InvalidArgument {
				t.Fatalf("got code %v; want %v", got, codes.InvalidArgument)
			}
			msg := status.Convert(err).Message()
			for _, want := range tc.wantMsg {
				if !strings.Contains(msg, want) {
					t.Errorf("got message %q; want it to contain %q", msg, want)
				}
			}
			info, br := statusDetails(t, err)
			if info.GetDomain() != ErrorDomain || info.GetReason() != ReasonInvalidArgument {
				t.Errorf("got ErrorInfo %v; want domain %q reason %q", info, ErrorDomain, ReasonInvalidArgument)
			}
			if br == nil {
				t.Fatalf("got no BadRequest detail; want %d field violations", len(tc.violations))
			}
			if got, want := len(br.GetFieldViolations()), len(tc.violations); got != want {
				t.Fatalf("got %d field violations; want %d", got, want)
			}
			for i, fv := range br.GetFieldViolations() {
				if fv.GetField() != tc.violations[i].field || fv.GetDescription() != tc.violations[i].desc {
					t.Errorf("violation %d: got {%q, %q}; want {%q, %q}", i,
						fv.GetField(), fv.GetDescription(), tc.violations[i].field, tc.violations[i].desc)
				}
			}
		})
	}
}

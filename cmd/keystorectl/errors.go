package main

import (
	"context"
	"errors"
	"strings"

	"github.com/keystore-dev/keystore/client"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// errorKinds name the client's sentinels in messages, most specific first.
var errorKinds = []struct {
	err  error
	kind string
}{
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

// describe turns an error of a call into one line: what kind of failure it
// is, then the server's words (every field a BadRequest names), e.g.
// "claim lost: the claim is lost: ...".
func describe(err error) string {
	if err == nil {
		return "no answer"
	}
	kind := ""
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			kind = k.kind
			break
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
	switch {
	case kind == "":
		return detail
	case detail == "" || detail == kind:
		return kind
	}
	return kind + ": " + detail
}

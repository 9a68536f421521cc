package auth

import (
	"context"
	"strconv"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxQuotedNamespace bounds how much of a caller-supplied namespace an error
// message repeats.
const maxQuotedNamespace = 64

// principalKey is the context key of the Principal.
type principalKey struct{}

// NewContext returns a copy of ctx that carries p.
func NewContext(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the Principal ctx carries, if any.
func FromContext(ctx context.Context) (*Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(*Principal)
	return p, ok && p != nil
}

// CheckNamespace returns a PERMISSION_DENIED status error unless the
// principal in ctx may use namespace. The service calls it once for every
// operation, including each operation of a Batch or Stream.
//
// IMPORTANT: a ctx with no Principal passes. That is "auth off": the server
// installs the interceptors, which put a Principal in every authenticated
// call's context, whenever a policy file is configured, and only then. A
// call that reaches the service without a Principal while a policy is
// configured is one of Options.Public, which must not touch namespaces.
func CheckNamespace(ctx context.Context, namespace string) error {
	p, ok := FromContext(ctx)
	if !ok || p.MayUse(namespace) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "permission denied: principal %q may not use namespace %s", p.name, quoteTruncated(namespace))
}

// CheckAdmin returns a PERMISSION_DENIED status error unless the principal
// in ctx may call admin RPCs. Like CheckNamespace, it passes a ctx with no
// Principal (auth off).
func CheckAdmin(ctx context.Context) error {
	p, ok := FromContext(ctx)
	if !ok || p.admin {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "permission denied: principal %q may not call admin RPCs", p.name)
}

// quoteTruncated quotes s, caller-supplied text, for an error message: at
// most maxQuotedNamespace bytes of it, cut on a character boundary, with
// "..." after the quotes when cut.
func quoteTruncated(s string) string {
	if len(s) <= maxQuotedNamespace {
		return strconv.Quote(s)
	}
	cut := maxQuotedNamespace
	for cut > maxQuotedNamespace-utf8.UTFMax && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "..."
}

package grpcidem

import (
	"context"
	keyscope "github.com/keystore-dev/keystore/client/internal/scope"
	"unicode"
	"unicode/utf8"

	"github.com/keystore-dev/keystore/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fingerprintMethod is the method part of client.Fingerprint for gRPC
// calls; the route part is the full method name.
const fingerprintMethod = "grpc"

// UnaryServerInterceptor returns an interceptor that makes the methods
// named by WithMethods effectively-once by the idempotency key in the
// request metadata, using c to claim keys and store outcomes (see the
// package comment). c must outlive the server; the interceptor does not
// close it.
//
// It panics if c is nil or the options are invalid (WithNamespace missing
// or malformed, an empty WithMetadataKey): both are programming errors
// found when the server is built.
func UnaryServerInterceptor(c *client.Client, opts ...Option) grpc.UnaryServerInterceptor {
	if c == nil {
		panic("grpcidem: UnaryServerInterceptor: nil client")
	}
	cfg, err := newConfig(opts)
	if err != nil {
		panic(err.Error())
	}
	i := &interceptor{c: c, cfg: cfg}
	return i.intercept
}

type interceptor struct {
	c   *client.Client
	cfg config
}

func (i *interceptor) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !i.cfg.methods[info.FullMethod] {
		return handler(ctx, req)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(i.cfg.metadataKey)
	if noKey(vals) && !i.cfg.requireKey {
		return handler(ctx, req)
	}
	// Whose key it is. NB: the caller is identified before its key is
	// looked at, so that a caller RequireScope refuses gets
	// UNAUTHENTICATED whatever it sent.
	prefix, err := i.scopePrefix(ctx)
	if err != nil {
		return nil, err
	}
	key, err := i.key(vals)
	if err != nil {
		return nil, err
	}
	key = prefix + key
	fp, err := fingerprint(info.FullMethod, req)
	if err != nil {
		return nil, err
	}

	// The handler's outcome, as it returned it; fn runs at most once.
	var (
		fresh     any   // its response, when it succeeded
		transient error // its error, when the claim was released for a retry
	)
	// NB: the handler's context ends with the call, but Do keeps the claim
	// (heartbeats) until the handler returns and then stores what it
	// returned, so a handler finishing past the caller's deadline is
	// replayed to the retry, not run again.
	fn := func(fctx context.Context) (client.Response, error) {
		resp, err := handler(fctx, req)
		if err != nil {
			st := status.Convert(err)
			if isTransient(st.Code()) {
				transient = err
				return client.Response{}, client.Retryable(err)
			}
			return errorResponse(st), err
		}
		stored, err := messageResponse(resp)
		if err != nil {
			// NB: the handler ran and cannot be undone; store the failure
			// so that retries do not run it again.
			return errorResponse(status.Convert(err)), err
		}
		fresh = resp
		return stored, nil
	}
	res, err := i.c.Do(ctx, i.cfg.namespace, key, fp, fn, i.doOptions()...)
	switch {
	case err == nil && !res.Replayed:
		return fresh, nil
	case err == nil:
		// The header is best effort: it fails only outside a gRPC server
		// or after headers went out, and the outcome matters more.
		_ = grpc.SetHeader(ctx, metadata.Pairs(ReplayedHeader, "true"))
		return decodeResponse(res.Response)
	case res != nil:
		// A deterministic error of the handler, now stored: answer as a
		// replay will.
		return decodeResponse(res.Response)
	case transient != nil && !isClaimLost(err):
		return nil, transient
	default:
		return nil, storeError(ctx, err)
	}
}

// noKey reports whether the values of the key metadata carry no key.
func noKey(vals []string) bool {
	return len(vals) == 0 || len(vals) == 1 && vals[0] == ""
}

// scopePrefix returns the prefix of the call's keystore key, by the scope
// of its caller, or the status to fail the call with.
func (i *interceptor) scopePrefix(ctx context.Context) (string, error) {
	if i.cfg.scope == nil { // WithoutScope
		return keyscope.Prefix("", false), nil
	}
	scope, ok := i.cfg.scope(ctx)
	switch {
	case ok && scope == "":
		return "", errEmptyScope
	case !ok && i.cfg.requireScope:
		return "", errUnauthenticated
	}
	return keyscope.Prefix(scope, ok), nil
}

// key returns the call's idempotency key from the values of its metadata.
func (i *interceptor) key(vals []string) (string, error) {
	switch {
	case noKey(vals):
		return "", status.Errorf(codes.InvalidArgument, "%s metadata is required", i.cfg.metadataKey)
	case len(vals) > 1:
		return "", status.Errorf(codes.InvalidArgument, "%s metadata must have one value (got %d)", i.cfg.metadataKey, len(vals))
	}
	k := vals[0]
	if len(k) > MaxKeyLen {
		return "", status.Errorf(codes.InvalidArgument, "%s metadata must be at most %d bytes (got %d)", i.cfg.metadataKey, MaxKeyLen, len(k))
	}
	if !utf8.ValidString(k) {
		return "", status.Errorf(codes.InvalidArgument, "%s metadata must be valid UTF-8", i.cfg.metadataKey)
	}
	for _, r := range k {
		if !unicode.IsPrint(r) {
			return "", status.Errorf(codes.InvalidArgument, "%s metadata must be printable", i.cfg.metadataKey)
		}
	}
	return k, nil
}

func (i *interceptor) doOptions() []client.DoOption {
	// client.WithLease keeps Do's default for a zero or negative lease.
	opts := []client.DoOption{client.WithWait(i.cfg.wait), client.WithLease(i.cfg.lease)}
	if i.cfg.retention > 0 {
		opts = append(opts, client.WithRetention(i.cfg.retention))
	}
	return opts
}

// fingerprint identifies a request: its method and deterministic encoding.
func fingerprint(fullMethod string, req any) ([]byte, error) {
	m, ok := req.(proto.Message)
	if !ok {
		return nil, status.Error(codes.Internal, "idempotent method's request is not a protobuf message")
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, status.Error(codes.Internal, "idempotent method's request cannot be encoded")
	}
	return client.Fingerprint(fingerprintMethod, fullMethod, body), nil
}

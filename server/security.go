package server

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/keystore-dev/keystore/auth"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The client port's security, in the order a call meets it:
//  1. TLS (Config.ClientTLS), client certificates optional;
//  2. the connection and stream limits (limits.go);
//  3. the codec: request bytes that do not decode are marked, not failed
//     (gRPC would answer INTERNAL), and the interceptors answer
//     INVALID_ARGUMENT;
//  4. the interceptors: recovery (a handler's panic is logged with its
//     stack and answered INTERNAL; the node stays up), malformed requests,
//     the metadata limit, then authentication and the admin methods
//     (Config.Auth);
//  5. the service: each operation's namespace (api.Access, backed by
//     policyAccess), quotas and rates (api).

// adminMethods are the ClusterService calls only an admin credential may
// make. Status with a checksum is judged in Status itself.
var adminMethods = map[string]bool{
	keystorev1.ClusterService_MemberAdd_FullMethodName:     true,
	keystorev1.ClusterService_MemberRemove_FullMethodName:  true,
	keystorev1.ClusterService_MemberPromote_FullMethodName: true,
	// A backup holds every namespace's records (backup.go).
	keystorev1.ClusterService_Backup_FullMethodName: true,
}

// publicMethods answer without credentials: load balancers and
// orchestrators probe health without one.
var publicMethods = map[string]bool{
	"/grpc.health.v1.Health/Check": true,
	"/grpc.health.v1.Health/Watch": true,
	"/grpc.health.v1.Health/List":  true,
}

// policyAccess is api.Access over the authorization policy: the
// interceptors put the caller's principal in every call's context.
type policyAccess struct{}

func (policyAccess) CheckNamespace(ctx context.Context, ns string) error {
	return auth.CheckNamespace(ctx, ns)
}

func (policyAccess) SeesLiveTokens(ctx context.Context) bool {
	p, ok := auth.FromContext(ctx)
	return ok && p.Admin()
}

// clientInterceptors are the client port's unary and stream interceptors.
func clientInterceptors(cfg Config, logger *slog.Logger) ([]grpc.UnaryServerInterceptor, []grpc.StreamServerInterceptor) {
	onPanic := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		method, _ := grpc.Method(ctx)
		logger.Error("recovered a panic in a handler; answered INTERNAL", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
	limits := cfg.Limits.withDefaults()
	unary := []grpc.UnaryServerInterceptor{
		recovery.UnaryServerInterceptor(onPanic),
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if malformed(req) {
				return nil, malformedError(info.FullMethod)
			}
			if err := limits.checkMetadata(ctx); err != nil {
				return nil, err
			}
			return handler(ctx, req)
		},
	}
	stream := []grpc.StreamServerInterceptor{
		recovery.StreamServerInterceptor(onPanic),
		func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			if err := limits.checkMetadata(ss.Context()); err != nil {
				return err
			}
			return handler(srv, checkedStream{ss, info.FullMethod})
		},
	}
	if cfg.Auth != nil {
		opts := auth.Options{Public: publicMethods, Admin: adminMethods}
		unary = append(unary, cfg.Auth.UnaryServerInterceptor(opts))
		stream = append(stream, cfg.Auth.StreamServerInterceptor(opts))
	}
	return unary, stream
}

// checkedStream answers a stream message that did not decode with
// INVALID_ARGUMENT.
type checkedStream struct {
	grpc.ServerStream
	method string
}

func (s checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if malformed(m) {
		return malformedError(s.method)
	}
	return nil
}

func malformedError(method string) error {
	return status.Errorf(codes.InvalidArgument, "invalid request: the message does not decode as %s's request", method)
}

// lenientCodec is gRPC's proto codec, except that a request that does not
// decode is reset and remembered (malformedMsgs) instead of failing the
// call: gRPC turns any decoding error into INTERNAL, and the contract
// says INVALID_ARGUMENT. The interceptors look each request up, once.
type lenientCodec struct{ encoding.CodecV2 }

// malformedMsgs holds the requests lenientCodec could not decode until an
// interceptor has looked at them.
var malformedMsgs sync.Map

func (c lenientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if err := c.CodecV2.Unmarshal(data, v); err != nil {
		m, ok := v.(proto.Message)
		if !ok {
			return err
		}
		proto.Reset(m)
		malformedMsgs.Store(v, struct{}{})
	}
	return nil
}

// malformed reports whether m did not decode, forgetting it.
func malformed(m any) bool {
	_, ok := malformedMsgs.LoadAndDelete(m)
	return ok
}

// clientCodec is the client port's codec.
func clientCodec() grpc.ServerOption {
	return grpc.ForceServerCodecV2(lenientCodec{encoding.GetCodecV2("proto")})
}

package auth

import (
	"context"
	"maps"

	"google.golang.org/grpc"
)

// Options says which methods the interceptors treat specially. Keys are full
// gRPC method names, "/package.Service/Method".
type Options struct {
	// Public lists the methods callable without credentials, e.g.
	// "/grpc.health.v1.Health/Check" and "/grpc.health.v1.Health/Watch".
	// Their calls are not authenticated (credentials sent are ignored) and
	// carry no Principal, so CheckNamespace and CheckAdmin pass them: list
	// only methods that touch no namespace.
	Public map[string]bool
	// Admin lists the methods only admin principals may call. A method in
	// both Public and Admin is treated as Admin.
	Admin map[string]bool
}

// UnaryServerInterceptor returns an interceptor that authenticates each
// unary call (unless it is opts.Public), puts the Principal in its context
// and refuses opts.Admin methods to non-admins. It does not check
// namespaces: the service calls CheckNamespace. opts is copied.
func (a *Authorizer) UnaryServerInterceptor(opts Options) grpc.UnaryServerInterceptor {
	opts = opts.clone()
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.authorize(ctx, info.FullMethod, opts)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor returns an interceptor that does for each
// streaming call what UnaryServerInterceptor does for unary ones; the
// handler's stream returns the context carrying the Principal. It does not
// check namespaces: the service calls CheckNamespace for every operation
// the stream carries. opts is copied.
func (a *Authorizer) StreamServerInterceptor(opts Options) grpc.StreamServerInterceptor {
	opts = opts.clone()
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.authorize(ss.Context(), info.FullMethod, opts)
		if err != nil {
			return err
		}
		return handler(srv, &serverStream{ServerStream: ss, ctx: ctx})
	}
}

// authorize authenticates a call of method and checks that its principal
// may call it, returning the context the handler is to run with.
func (a *Authorizer) authorize(ctx context.Context, method string, opts Options) (context.Context, error) {
	if opts.Public[method] && !opts.Admin[method] {
		return ctx, nil
	}
	p, err := a.Authenticate(ctx)
	if err != nil {
		a.logger.Debug("call not authenticated", "method", method, "err", err)
		return nil, err
	}
	ctx = NewContext(ctx, p)
	if opts.Admin[method] {
		if err := CheckAdmin(ctx); err != nil {
			a.logger.Debug("admin call refused", "method", method, "principal", p.name)
			return nil, err
		}
	}
	return ctx, nil
}

// clone returns a copy of o whose maps the caller cannot change.
func (o Options) clone() Options {
	return Options{Public: maps.Clone(o.Public), Admin: maps.Clone(o.Admin)}
}

// serverStream is a grpc.ServerStream whose Context carries the Principal.
// NB: holding a context in a struct is the grpc-go way of replacing a
// stream's context; serverStream lives exactly as long as the call.
type serverStream struct {
	grpc.ServerStream
	ctx context.Context
}

// Context returns the stream's context, which carries the Principal.
func (s *serverStream) Context() context.Context { return s.ctx }

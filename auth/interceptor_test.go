package auth

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The methods of the test service, a stand-in for keystore's: Use and
// Batch check namespaces as keystore's service does, Admin is an admin RPC.
const (
	methodUse   = "/authtest.Test/Use"
	methodAdmin = "/authtest.Test/Admin"
	methodBatch = "/authtest.Test/Batch"
)

// testOptions are the Options the test server runs with.
var testOptions = Options{
	Public: map[string]bool{
		"/grpc.health.v1.Health/Check": true,
		"/grpc.health.v1.Health/Watch": true,
	},
	Admin: map[string]bool{methodAdmin: true},
}

// testServiceDesc describes the test service. Its messages are
// StringValues: a namespace in, the principal's name (or "OK" and a status
// code for Batch) out.
var testServiceDesc = grpc.ServiceDesc{
	ServiceName: "authtest.Test",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Use", Handler: unaryHandler(methodUse, func(ctx context.Context, ns string) error { return CheckNamespace(ctx, ns) })},
		{MethodName: "Admin", Handler: unaryHandler(methodAdmin, func(context.Context, string) error { return nil })},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Batch", Handler: batchHandler, ServerStreams: true, ClientStreams: true},
	},
}

// unaryHandler returns a method handler that runs check on the request's
// namespace and answers the principal's name.
func unaryHandler(method string, check func(context.Context, string) error) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		in := new(wrapperspb.StringValue)
		if err := dec(in); err != nil {
			return nil, err
		}
		h := func(ctx context.Context, req any) (any, error) {
			if err := check(ctx, req.(*wrapperspb.StringValue).GetValue()); err != nil {
				return nil, err
			}
			p, ok := FromContext(ctx)
			if !ok {
				return wrapperspb.String(""), nil
			}
			return wrapperspb.String(p.Name()), nil
		}
		if interceptor == nil {
			return h(ctx, in)
		}
		return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, h)
	}
}

// batchHandler answers each namespace received with the code of
// CheckNamespace for it, the way keystore's Batch and Stream check each
// operation on its own.
func batchHandler(_ any, ss grpc.ServerStream) error {
	for {
		in := new(wrapperspb.StringValue)
		if err := ss.RecvMsg(in); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		code := status.Code(CheckNamespace(ss.Context(), in.GetValue()))
		if err := ss.SendMsg(wrapperspb.String(code.String())); err != nil {
			return err
		}
	}
}

// startServer serves the health service and the test service, behind a's
// interceptors, on a bufconn listener with the given server credentials,
// and returns a client connection factory taking client credentials.
func startServer(t *testing.T, a *Authorizer, creds credentials.TransportCredentials) func(credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(
		grpc.Creds(creds),
		grpc.UnaryInterceptor(a.UnaryServerInterceptor(testOptions)),
		grpc.StreamInterceptor(a.StreamServerInterceptor(testOptions)),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	srv.RegisterService(&testServiceDesc, struct{}{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return func(clientCreds credentials.TransportCredentials) *grpc.ClientConn {
		conn, err := grpc.NewClient("passthrough:///bufnet",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(clientCreds),
		)
		if err != nil {
			t.Fatalf("grpc.NewClient: %v", err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
}

// withAuth returns ctx with the given outgoing authorization values.
func withAuth(ctx context.Context, auth ...string) context.Context {
	for _, v := range auth {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v)
	}
	return ctx
}

func TestInterceptorsUnary(t *testing.T) {
	a, _, logs := newTestAuthorizer(t)
	conn := startServer(t, a, insecure.NewCredentials())(insecure.NewCredentials())

	healthCheck := func(ctx context.Context, conn *grpc.ClientConn) (string, error) {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return resp.GetStatus().String(), err
	}
	call := func(method, ns string) func(context.Context, *grpc.ClientConn) (string, error) {
		return func(ctx context.Context, conn *grpc.ClientConn) (string, error) {
			out := new(wrapperspb.StringValue)
			err := conn.Invoke(ctx, method, wrapperspb.String(ns), out)
			return out.GetValue(), err
		}
	}

	tests := []struct {
		name string
		auth []string
		call func(context.Context, *grpc.ClientConn) (string, error)
		want string // the answer when the call succeeds
		code codes.Code
		msg  string
	}{
		{name: "token on its namespace", auth: []string{"Bearer " + tokPayments}, call: call(methodUse, "payments"), want: "payments-service"},
		{name: "token on its second namespace", auth: []string{"bearer " + tokPayments}, call: call(methodUse, "refunds"), want: "payments-service"},
		{name: "token on another namespace", auth: []string{"Bearer " + tokPayments}, call: call(methodUse, "orders"), code: codes.PermissionDenied, msg: `permission denied: principal "payments-service" may not use namespace "orders"`},
		{name: "star principal", auth: []string{"Bearer " + tokOps}, call: call(methodUse, "orders"), want: "ops"},
		{name: "admin without namespaces on a namespace", auth: []string{"Bearer " + tokAuditor}, call: call(methodUse, "payments"), code: codes.PermissionDenied},
		{name: "non-admin on admin method", auth: []string{"Bearer " + tokPayments}, call: call(methodAdmin, ""), code: codes.PermissionDenied, msg: `permission denied: principal "payments-service" may not call admin RPCs`},
		{name: "admin on admin method", auth: []string{"Bearer " + tokOps}, call: call(methodAdmin, ""), want: "ops"},
		{name: "admin without namespaces on admin method", auth: []string{"Bearer " + tokAuditor}, call: call(methodAdmin, ""), want: "auditor"},
		{name: "no credentials", call: call(methodUse, "payments"), code: codes.Unauthenticated, msg: msgMissing},
		{name: "no credentials on admin method", call: call(methodAdmin, ""), code: codes.Unauthenticated, msg: msgMissing},
		{name: "bearer without token", auth: []string{"Bearer"}, call: call(methodUse, "payments"), code: codes.Unauthenticated, msg: msgMalformed},
		{name: "basic scheme", auth: []string{"Basic x"}, call: call(methodUse, "payments"), code: codes.Unauthenticated, msg: msgMalformed},
		{name: "two authorization values", auth: []string{"Bearer " + tokPayments, "Bearer " + tokOps}, call: call(methodUse, "payments"), code: codes.Unauthenticated, msg: msgMalformed},
		{name: "unknown token", auth: []string{"Bearer " + tokUnknown}, call: call(methodUse, "payments"), code: codes.Unauthenticated, msg: msgUnknown},
		{name: "public method without credentials", call: healthCheck, want: "SERVING"},
		{name: "public method with unknown credentials", auth: []string{"Bearer " + tokUnknown}, call: healthCheck, want: "SERVING"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.call(withAuth(t.Context(), tt.auth...), conn)
			checkStatus(t, err, tt.code, tt.msg)
			if err == nil && got != tt.want {
				t.Errorf("answer = %q; want %q", got, tt.want)
			}
		})
	}
	for _, tok := range []string{tokPayments, tokOps, tokUnknown, tokAuditor} {
		if strings.Contains(logs.String(), tok) {
			t.Errorf("logs contain a token:\n%s", logs)
		}
	}
}

// batch sends namespaces on a Batch stream and returns the code answered
// for each, or the stream's error.
func batch(ctx context.Context, conn *grpc.ClientConn, namespaces ...string) ([]string, error) {
	s, err := conn.NewStream(ctx, &testServiceDesc.Streams[0], methodBatch)
	if err != nil {
		return nil, err
	}
	var got []string
	for _, ns := range namespaces {
		if err := s.SendMsg(wrapperspb.String(ns)); err != nil {
			break // the error comes from RecvMsg
		}
		out := new(wrapperspb.StringValue)
		if err := s.RecvMsg(out); err != nil {
			return got, err
		}
		got = append(got, out.GetValue())
	}
	if err := s.CloseSend(); err != nil {
		return got, err
	}
	if err := s.RecvMsg(new(wrapperspb.StringValue)); !errors.Is(err, io.EOF) {
		return got, err
	}
	return got, nil
}

func TestInterceptorsStream(t *testing.T) {
	a, _, _ := newTestAuthorizer(t)
	conn := startServer(t, a, insecure.NewCredentials())(insecure.NewCredentials())

	tests := []struct {
		name       string
		auth       []string
		namespaces []string
		want       []string
		code       codes.Code
		msg        string
	}{
		{
			name:       "each operation checked on its own",
			auth:       []string{"Bearer " + tokPayments},
			namespaces: []string{"payments", "orders", "refunds", ""},
			want:       []string{"OK", "PermissionDenied", "OK", "PermissionDenied"},
		},
		{
			name:       "star principal",
			auth:       []string{"Bearer " + tokOps},
			namespaces: []string{"payments", "orders"},
			want:       []string{"OK", "OK"},
		},
		{name: "no credentials", namespaces: []string{"payments"}, code: codes.Unauthenticated, msg: msgMissing},
		{name: "unknown token", auth: []string{"Bearer " + tokUnknown}, namespaces: []string{"payments"}, code: codes.Unauthenticated, msg: msgUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := batch(withAuth(t.Context(), tt.auth...), conn, tt.namespaces...)
			checkStatus(t, err, tt.code, tt.msg)
			if err == nil && strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("answers = %q; want %q", got, tt.want)
			}
		})
	}

	t.Run("public stream without credentials", func(t *testing.T) {
		w, err := healthpb.NewHealthClient(conn).Watch(t.Context(), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Watch status = %v; want SERVING", resp.GetStatus())
		}
	})
}

// fakeStream is a grpc.ServerStream with only a context.
type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *fakeStream) Context() context.Context { return s.ctx }

// TestInterceptorFunctions calls the interceptors directly with a fake
// handler, to see what context the handler gets.
func TestInterceptorFunctions(t *testing.T) {
	a, _, _ := newTestAuthorizer(t)
	opts := Options{
		Public: map[string]bool{"/p.S/Public": true, "/p.S/Both": true},
		Admin:  map[string]bool{"/p.S/Admin": true, "/p.S/Both": true},
	}
	unary := a.UnaryServerInterceptor(opts)
	stream := a.StreamServerInterceptor(opts)
	// Changing the maps afterwards changes nothing.
	opts.Public["/p.S/Admin"] = true
	delete(opts.Admin, "/p.S/Admin")

	tests := []struct {
		name      string
		method    string
		auth      []string
		principal string // the handler's principal; "" for none
		code      codes.Code
	}{
		{"authenticated", "/p.S/M", []string{"Bearer " + tokPayments}, "payments-service", codes.OK},
		{"unauthenticated", "/p.S/M", nil, "", codes.Unauthenticated},
		{"public without credentials", "/p.S/Public", nil, "", codes.OK},
		{"public ignores credentials", "/p.S/Public", []string{"Bearer " + tokPayments}, "", codes.OK},
		{"admin refused", "/p.S/Admin", []string{"Bearer " + tokPayments}, "", codes.PermissionDenied},
		{"admin allowed", "/p.S/Admin", []string{"Bearer " + tokOps}, "ops", codes.OK},
		{"admin wins over public", "/p.S/Both", nil, "", codes.Unauthenticated},
		{"admin wins over public, admin", "/p.S/Both", []string{"Bearer " + tokAuditor}, "auditor", codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := callContext(tt.auth, nil)
			principalIn := func(ctx context.Context) string {
				if p, ok := FromContext(ctx); ok {
					return p.Name()
				}
				return ""
			}

			var called bool
			_, err := unary(ctx, "req", &grpc.UnaryServerInfo{FullMethod: tt.method}, func(ctx context.Context, req any) (any, error) {
				called = true
				if got := principalIn(ctx); got != tt.principal {
					t.Errorf("unary handler principal = %q; want %q", got, tt.principal)
				}
				return nil, nil
			})
			checkStatus(t, err, tt.code, "")
			if called != (tt.code == codes.OK) {
				t.Errorf("unary handler called: %v; want %v", called, tt.code == codes.OK)
			}

			called = false
			err = stream(nil, &fakeStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: tt.method}, func(_ any, ss grpc.ServerStream) error {
				called = true
				if got := principalIn(ss.Context()); got != tt.principal {
					t.Errorf("stream handler principal = %q; want %q", got, tt.principal)
				}
				return nil
			})
			checkStatus(t, err, tt.code, "")
			if called != (tt.code == codes.OK) {
				t.Errorf("stream handler called: %v; want %v", called, tt.code == codes.OK)
			}
		})
	}
}

package server

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestHandlerPanicIsAnsweredInternal: a panic in a handler (unary or
// stream) is answered INTERNAL with a fixed message, logged with its
// stack, and does not take the node down (the test process survives it).
func TestHandlerPanicIsAnsweredInternal(t *testing.T) {
	var logs bytes.Buffer
	unary, stream := clientInterceptors(Config{}, slog.New(slog.NewTextHandler(&logs, nil)))
	chainUnary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		for i := len(unary) - 1; i >= 0; i-- {
			next, ic := h, unary[i]
			h = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, next) }
		}
		return h(ctx, req)
	}
	_, err := chainUnary(context.Background(), struct{}{}, &grpc.UnaryServerInfo{FullMethod: "/keystore.v1.KeyStoreService/Claim"},
		func(context.Context, any) (any, error) { panic("secret internal detail") })
	if status.Code(err) != codes.Internal || strings.Contains(status.Convert(err).Message(), "secret") {
		t.Fatalf("unary handler panic: %v; want INTERNAL without the panic's text", err)
	}
	err = stream[0](nil, fakeStream{}, &grpc.StreamServerInfo{FullMethod: "/keystore.v1.BatchService/Stream"},
		func(any, grpc.ServerStream) error { panic("secret internal detail") })
	if status.Code(err) != codes.Internal || strings.Contains(status.Convert(err).Message(), "secret") {
		t.Fatalf("stream handler panic: %v; want INTERNAL without the panic's text", err)
	}
	if !strings.Contains(logs.String(), "secret internal detail") || !strings.Contains(logs.String(), "stack") {
		t.Fatalf("log %q: want the panic and its stack", logs.String())
	}
}

type fakeStream struct{ grpc.ServerStream }

func (fakeStream) Context() context.Context { return context.Background() }

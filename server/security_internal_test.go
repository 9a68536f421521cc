package server

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
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

// TestMalformedStreamMessageIsInvalidArgument: a stream message that does
// not decode is answered INVALID_ARGUMENT, as a unary request is (the
// process test covers the unary path), and a good one passes.
func TestMalformedStreamMessageIsInvalidArgument(t *testing.T) {
	_, stream := clientInterceptors(Config{}, slog.New(slog.DiscardHandler))
	codec := lenientCodec{encoding.GetCodecV2("proto")}
	for _, tc := range []struct {
		name string
		data []byte
		want codes.Code
	}{
		// Field 1 of StreamRequest is a message: 0xff is no valid tag.
		{"undecodable", []byte{0x0a, 0x02, 0xff, 0xff}, codes.InvalidArgument},
		{"empty", nil, codes.OK},
	} {
		var got error
		_ = stream[1](nil, decodingStream{codec: codec, data: tc.data}, &grpc.StreamServerInfo{FullMethod: "/keystore.v1.BatchService/Stream"},
			func(_ any, ss grpc.ServerStream) error {
				got = ss.RecvMsg(&keystorev1.StreamRequest{})
				return nil
			})
		if status.Code(got) != tc.want {
			t.Errorf("%s stream message: %v; want %v", tc.name, got, tc.want)
		}
	}
}

// decodingStream hands its data to the codec as gRPC would.
type decodingStream struct {
	grpc.ServerStream
	codec encoding.CodecV2
	data  []byte
}

func (decodingStream) Context() context.Context { return context.Background() }

func (s decodingStream) RecvMsg(m any) error {
	return s.codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(s.data)}, m)
}

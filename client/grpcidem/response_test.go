package grpcidem

import (
	"testing"

	"github.com/keystore-dev/keystore/client"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func TestResponseRoundTrip(t *testing.T) {
	msg := &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING}
	stored, err := messageResponse(msg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeResponse(stored)
	if err != nil || !proto.Equal(got.(proto.Message), msg) {
		t.Fatalf("decode(encode(%v)) = %v, %v; want the message", msg, got, err)
	}

	st, _ := status.New(codes.NotFound, "no such order").WithDetails(&errdetails.ResourceInfo{ResourceName: "order-1"})
	_, err = decodeResponse(errorResponse(st))
	if !proto.Equal(status.Convert(err).Proto(), st.Proto()) {
		t.Fatalf("decode(encode(%v)) = %v; want the status", st.Proto(), status.Convert(err).Proto())
	}

	if _, err := messageResponse("not a message"); status.Code(err) != codes.Internal {
		t.Fatalf("messageResponse(string) = %v; want INTERNAL", err)
	}
}

func TestDecodeResponseUnreadable(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    client.Response
	}{
		{"unknown type", client.Response{Metadata: map[string]string{messageTypeKey: "no.such.Type"}}},
		{"no type", client.Response{Body: []byte{0x08, 0x01}}},
		{"bad body", client.Response{Metadata: map[string]string{messageTypeKey: "grpc.health.v1.HealthCheckResponse"}, Body: []byte{0xff}}},
		{"bad status", client.Response{Code: int32(codes.NotFound), Body: []byte{0xff}}},
		{"status code differs", errorResponseWithCode(codes.NotFound, codes.AlreadyExists)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeResponse(tc.r); err != errUnreadable {
				t.Fatalf("decodeResponse(%+v) = %v; want %v", tc.r, err, errUnreadable)
			}
		})
	}
}

func errorResponseWithCode(stored, code codes.Code) client.Response {
	r := errorResponse(status.New(stored, "x"))
	r.Code = int32(code)
	return r
}

package grpcidem

import (
	"github.com/keystore-dev/keystore/client"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// messageTypeKey is the client.Response metadata entry naming the stored
// message's full protobuf type.
const messageTypeKey = "grpc-message-type"

// statusType is the full name of google.rpc.Status, the type stored for an
// error.
var statusType = string((&spb.Status{}).ProtoReflect().Descriptor().FullName())

var deterministic = proto.MarshalOptions{Deterministic: true}

// messageResponse encodes a handler's response message for storage: Code
// 0 (OK), Body its deterministic encoding, its type in the metadata.
func messageResponse(resp any) (client.Response, error) {
	m, ok := resp.(proto.Message)
	if !ok || resp == nil {
		return client.Response{}, status.Error(codes.Internal, "idempotent method's response is not a protobuf message")
	}
	body, err := deterministic.Marshal(m)
	if err != nil {
		return client.Response{}, status.Error(codes.Internal, "idempotent method's response cannot be encoded")
	}
	return client.Response{
		Code:     int32(codes.OK),
		Metadata: map[string]string{messageTypeKey: string(m.ProtoReflect().Descriptor().FullName())},
		Body:     body,
	}, nil
}

// errorResponse encodes a deterministic error for storage: Code its gRPC
// code, Body its google.rpc.Status with the details.
func errorResponse(st *status.Status) client.Response {
	body, err := deterministic.Marshal(st.Proto())
	if err != nil {
		// The details cannot be encoded: keep the code and message.
		body, _ = deterministic.Marshal(status.New(st.Code(), st.Message()).Proto())
	}
	return client.Response{
		Code:     int32(st.Code()),
		Metadata: map[string]string{messageTypeKey: statusType},
		Body:     body,
	}
}

// decodeResponse rebuilds what messageResponse or errorResponse stored: the
// response message, or the status error.
func decodeResponse(r client.Response) (any, error) {
	if r.Code != int32(codes.OK) {
		sp := &spb.Status{}
		if err := proto.Unmarshal(r.Body, sp); err != nil || sp.GetCode() != r.Code {
			return nil, errUnreadable
		}
		return nil, status.ErrorProto(sp)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(r.Metadata[messageTypeKey]))
	if err != nil {
		return nil, errUnreadable
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(r.Body, m); err != nil {
		return nil, errUnreadable
	}
	return m, nil
}

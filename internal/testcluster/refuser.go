package testcluster

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// HeartbeatRefuser is a client interceptor that refuses the first n
// Heartbeat calls with RESOURCE_EXHAUSTED, which the Go client does not
// retry, so each refusal is one failed heartbeat. The client must send its
// writes as unary calls (client.Config.MaxInflight < 0) for it to see them.
type HeartbeatRefuser struct {
	refuse  atomic.Int64
	refused atomic.Int64
}

// NewHeartbeatRefuser returns a HeartbeatRefuser of the first n heartbeats.
func NewHeartbeatRefuser(n int64) *HeartbeatRefuser {
	h := &HeartbeatRefuser{}
	h.refuse.Store(n)
	return h
}

// Refused returns how many heartbeats it refused.
func (h *HeartbeatRefuser) Refused() int64 { return h.refused.Load() }

// DialOption installs it on a client connection.
func (h *HeartbeatRefuser) DialOption() grpc.DialOption {
	return grpc.WithUnaryInterceptor(h.intercept)
}

func (h *HeartbeatRefuser) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if method == "/keystore.v1.KeyStoreService/Heartbeat" && h.refuse.Add(-1) >= 0 {
		h.refused.Add(1)
		return status.Error(codes.ResourceExhausted, "heartbeat refused by the test")
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

package server

import (
	"context"
	"fmt"
	"net"

	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Limits bound what callers can make one node hold on its client port.
// Each has a default; a negative value turns it off. Quotas and rates per
// namespace, and waiting Claims, are the API's (api.Config).
type Limits struct {
	// MaxConnections caps the client port's open connections (default
	// 4096): a connection beyond it waits in the kernel's accept queue
	// until one closes.
	MaxConnections int
	// MaxStreamsPerConn caps the calls in flight on one connection
	// (default 1024); gRPC's clients queue calls beyond it.
	MaxStreamsPerConn int
	// MaxMetadataEntries caps the metadata entries of one call (default
	// 64): RESOURCE_EXHAUSTED naming the limit.
	MaxMetadataEntries int
	// MaxHeaderBytes caps the size of a call's headers (default 64 KiB);
	// gRPC refuses larger ones.
	MaxHeaderBytes int
}

func (l Limits) withDefaults() Limits {
	set := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	set(&l.MaxConnections, 4096)
	set(&l.MaxStreamsPerConn, 1024)
	set(&l.MaxMetadataEntries, 64)
	set(&l.MaxHeaderBytes, 64<<10)
	return l
}

// serverOptions are the gRPC server options that enforce l.
func (l Limits) serverOptions() []grpc.ServerOption {
	var opts []grpc.ServerOption
	if l.MaxStreamsPerConn > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(uint32(l.MaxStreamsPerConn)))
	}
	if l.MaxHeaderBytes > 0 {
		opts = append(opts, grpc.MaxHeaderListSize(uint32(l.MaxHeaderBytes)))
	}
	return opts
}

// listener applies MaxConnections to the client port's listener.
func (l Limits) listener(lis net.Listener) net.Listener {
	if l.MaxConnections <= 0 {
		return lis
	}
	return netutil.LimitListener(lis, l.MaxConnections)
}

// checkMetadata refuses a call with more metadata entries than the limit.
func (l Limits) checkMetadata(ctx context.Context) error {
	if l.MaxMetadataEntries <= 0 {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	n := 0
	for _, v := range md {
		n += len(v)
	}
	if n > l.MaxMetadataEntries {
		return status.Error(codes.ResourceExhausted, fmt.Sprintf("too many metadata entries: %d, limit %d (--max-metadata-entries)", n, l.MaxMetadataEntries))
	}
	return nil
}

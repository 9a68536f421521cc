package harness

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// batchKV sends the workload's writes through BatchService, each beside a
// filler Claim of a key outside the checked namespace, so that the batch
// path (operations run concurrently in one call) is what the checker judges
// for these clients (through opKV; Get goes through KeyStoreService).
type batchKV struct {
	bs     keystorev1.BatchServiceClient
	filler string // namespace of the filler claims
}

var fillerSeq atomic.Uint64

// retentionFiller keeps filler records briefly.
const retentionFiller = 5 * time.Second

func (b batchKV) do(ctx context.Context, op *keystorev1.BatchOperation) (*keystorev1.BatchResult, error) {
	filler := &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Claim{Claim: &keystorev1.ClaimRequest{
		Namespace: b.filler, Key: fmt.Sprintf("filler-%d", fillerSeq.Add(1)), Retention: durationpb.New(retentionFiller),
	}}}
	resp, err := b.bs.Batch(ctx, &keystorev1.BatchRequest{Operations: []*keystorev1.BatchOperation{filler, op}})
	if err != nil {
		return nil, err
	}
	if len(resp.GetResults()) != 2 {
		return nil, status.Errorf(codes.Internal, "batch of 2 got %d results", len(resp.GetResults()))
	}
	r := resp.GetResults()[1]
	if err := client.BatchResultError(r); err != nil {
		return nil, err
	}
	return r, nil
}

// opKV serves KeyStoreService's writes through do, Get through the
// embedded client: what batchKV and streamKV share.
type opKV struct {
	keystorev1.KeyStoreServiceClient
	do func(ctx context.Context, op *keystorev1.BatchOperation) (*keystorev1.BatchResult, error)
}

func (k opKV) Claim(ctx context.Context, in *keystorev1.ClaimRequest, _ ...grpc.CallOption) (*keystorev1.ClaimResponse, error) {
	r, err := k.do(ctx, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Claim{Claim: in}})
	return r.GetClaim(), err
}

func (k opKV) Complete(ctx context.Context, in *keystorev1.CompleteRequest, _ ...grpc.CallOption) (*keystorev1.CompleteResponse, error) {
	r, err := k.do(ctx, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Complete{Complete: in}})
	return r.GetComplete(), err
}

func (k opKV) Release(ctx context.Context, in *keystorev1.ReleaseRequest, _ ...grpc.CallOption) (*keystorev1.ReleaseResponse, error) {
	r, err := k.do(ctx, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Release{Release: in}})
	return r.GetRelease(), err
}

func (k opKV) Heartbeat(ctx context.Context, in *keystorev1.HeartbeatRequest, _ ...grpc.CallOption) (*keystorev1.HeartbeatResponse, error) {
	r, err := k.do(ctx, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Heartbeat{Heartbeat: in}})
	return r.GetHeartbeat(), err
}

package api

import (
	"context"
	"fmt"
	"sync"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/status"
)

// MaxBatchOperations bounds one BatchRequest.
const MaxBatchOperations = 1024

// BatchService serves keystore.v1.BatchService.
type BatchService struct {
	keystorev1.UnimplementedBatchServiceServer
	kv      keystorev1.KeyStoreServiceServer
	workers *workers // run the operations of a batch
	// ownTimers: kv ends every wait at its context's deadline by itself
	// (see deadlineKeeper), so a streamed operation's timeout needs no
	// timer here.
	ownTimers bool

	drainOnce sync.Once
	draining  chan struct{} // closed by Drain
}

// NewBatchService returns the BatchService over kv: each operation of a
// batch is a call of kv's method of the same name, all of them concurrent,
// so a batch answers exactly what the operations sent one by one would.
func NewBatchService(kv keystorev1.KeyStoreServiceServer) *BatchService {
	_, own := kv.(deadlineKeeper)
	return &BatchService{kv: kv, workers: newWorkers(), draining: make(chan struct{}), ownTimers: own}
}

// deadlineKeeper is implemented by a KeyStoreServiceServer none of whose
// methods waits past its context's deadline (as reported by Deadline),
// whether or not the context's Done fires then: every wait of service is
// under opContext's timer, or ends before the deadline by its own timer (a
// Claim's wait). A Stream's operation then gets a context that only reports
// its timeout (withDeadline), which saves one timer per operation: the
// service makes its own anyway, a little before the deadline.
type deadlineKeeper interface{ keepsDeadlines() }

// withDeadline returns a context like parent that reports the deadline d,
// without a timer: its Done and Err are parent's.
func withDeadline(parent context.Context, d time.Time) context.Context {
	return deadlineCtx{parent, d}
}

type deadlineCtx struct {
	context.Context
	d time.Time
}

func (c deadlineCtx) Deadline() (time.Time, bool) { return c.d, true }

// Drain prepares for a stop: every Stream stops taking operations, answers
// those it has, and ends with UNAVAILABLE (its caller sends the rest to
// another node); a Stream opened later ends at once. gRPC's graceful stop
// would otherwise wait for streams that never end.
func (b *BatchService) Drain() {
	b.drainOnce.Do(func() { close(b.draining) })
}

// Batch implements BatchService.Batch.
func (b *BatchService) Batch(ctx context.Context, req *keystorev1.BatchRequest) (*keystorev1.BatchResponse, error) {
	ops := req.GetOperations()
	if len(ops) == 0 || len(ops) > MaxBatchOperations {
		return nil, invalidArgument([]fieldError{{"operations", fmt.Sprintf("must hold 1-%d operations (got %d)", MaxBatchOperations, len(ops))}})
	}
	results := make([]*keystorev1.BatchResult, len(ops))
	if len(ops) == 1 {
		results[0] = b.run(ctx, ops[0])
	} else {
		var wg sync.WaitGroup
		wg.Add(len(ops))
		for i, op := range ops {
			b.workers.run(func() {
				defer wg.Done()
				results[i] = b.run(ctx, op)
			})
		}
		wg.Wait()
	}
	return &keystorev1.BatchResponse{Results: results}, nil
}

// run answers one operation.
func (b *BatchService) run(ctx context.Context, op *keystorev1.BatchOperation) *keystorev1.BatchResult {
	out := &keystorev1.BatchResult{}
	var err error
	switch o := op.GetOperation().(type) {
	case *keystorev1.BatchOperation_Claim:
		var r *keystorev1.ClaimResponse
		if r, err = b.kv.Claim(ctx, o.Claim); err == nil {
			out.Response = &keystorev1.BatchResult_Claim{Claim: r}
		}
	case *keystorev1.BatchOperation_Complete:
		var r *keystorev1.CompleteResponse
		if r, err = b.kv.Complete(ctx, o.Complete); err == nil {
			out.Response = &keystorev1.BatchResult_Complete{Complete: r}
		}
	case *keystorev1.BatchOperation_Release:
		var r *keystorev1.ReleaseResponse
		if r, err = b.kv.Release(ctx, o.Release); err == nil {
			out.Response = &keystorev1.BatchResult_Release{Release: r}
		}
	case *keystorev1.BatchOperation_Heartbeat:
		var r *keystorev1.HeartbeatResponse
		if r, err = b.kv.Heartbeat(ctx, o.Heartbeat); err == nil {
			out.Response = &keystorev1.BatchResult_Heartbeat{Heartbeat: r}
		}
	default:
		err = invalidArgument([]fieldError{{"operation", "must be one of claim, complete, release, heartbeat"}})
	}
	if err != nil {
		// The kv methods return only statuses built by errors.go, so no
		// internal text travels in them.
		out.Status = status.Convert(err).Proto()
	}
	return out
}

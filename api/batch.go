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
	ops     batchOps // what the operations of a batch call
	workers *workers // run the operations of a batch
	cfg     BatchConfig

	drainOnce sync.Once
	draining  chan struct{} // closed by Drain
}

// NewBatchService returns the BatchService over kv: each operation of a
// batch is a call of kv's method of the same name, all of them concurrent,
// so a batch answers exactly what the operations sent one by one would.
func NewBatchService(kv keystorev1.KeyStoreServiceServer, cfg BatchConfig) *BatchService {
	ops, ok := kv.(batchOps)
	if !ok {
		ops = timedOps{kv}
	}
	if cfg.GatherYields == 0 {
		cfg.GatherYields = 4
	}
	return &BatchService{ops: ops, workers: newWorkers(), draining: make(chan struct{}), cfg: cfg}
}

// BatchConfig tunes a BatchService. Zero values take the defaults.
type BatchConfig struct {
	// GatherYields bounds how often a stream's sender, with other
	// operations in flight, yields to let the results woken with its own
	// join its message (default 4; negative: never). Tuned for three nodes
	// sharing two cores (docs/performance-notes.md).
	GatherYields int
}

// deadline is when an operation must be answered by, passed beside its
// context rather than on it. A streamed operation has a timeout of its
// own, shorter than its stream's life, and service keeps it with the
// timers it makes anyway (opContext's, a waiting Claim's), a little before
// it: putting it on the context as well would cost a second timer per
// operation for nothing. As a value it cannot pass for a context whose
// Done fires then. The zero deadline is none.
type deadline struct {
	t  time.Time
	ok bool
}

// deadlineOf returns ctx's deadline: the operations of a unary call are
// answered by their caller's.
func deadlineOf(ctx context.Context) deadline {
	t, ok := ctx.Deadline()
	return deadline{t, ok}
}

// deadlineIn returns the deadline d from now.
func deadlineIn(d time.Duration) deadline { return deadline{time.Now().Add(d), true} }

// context returns ctx ended by d, for a method that knows only contexts:
// ctx itself when it ends by d already, else a child with a timer (the
// caller must call cancel).
func (d deadline) context(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); !d.ok || ok && !dl.After(d.t) {
		return ctx, func() {}
	}
	return context.WithDeadline(ctx, d.t)
}

// batchOps are the operations a batch or a stream runs, each answered by a
// deadline given as a value (see deadline). service implements them with
// every wait under a timer that ends by the deadline; timedOps, for any
// other KeyStoreServiceServer, puts the deadline on the context. An
// operation added to batches gets its method here, so that whoever writes
// it is handed the deadline to keep.
type batchOps interface {
	claim(ctx context.Context, by deadline, req *keystorev1.ClaimRequest) (*keystorev1.ClaimResponse, error)
	complete(ctx context.Context, by deadline, req *keystorev1.CompleteRequest) (*keystorev1.CompleteResponse, error)
	release(ctx context.Context, by deadline, req *keystorev1.ReleaseRequest) (*keystorev1.ReleaseResponse, error)
	heartbeat(ctx context.Context, by deadline, req *keystorev1.HeartbeatRequest) (*keystorev1.HeartbeatResponse, error)
}

// service runs the operations of batches itself, with no timer of their
// own (service.go).
var _ batchOps = (*service)(nil)

// timedOps are the batchOps of a KeyStoreServiceServer that knows only
// contexts: the deadline goes on the context, at the cost of a timer.
type timedOps struct {
	kv keystorev1.KeyStoreServiceServer
}

func (o timedOps) claim(ctx context.Context, by deadline, req *keystorev1.ClaimRequest) (*keystorev1.ClaimResponse, error) {
	return timed(ctx, by, req, o.kv.Claim)
}

func (o timedOps) complete(ctx context.Context, by deadline, req *keystorev1.CompleteRequest) (*keystorev1.CompleteResponse, error) {
	return timed(ctx, by, req, o.kv.Complete)
}

func (o timedOps) release(ctx context.Context, by deadline, req *keystorev1.ReleaseRequest) (*keystorev1.ReleaseResponse, error) {
	return timed(ctx, by, req, o.kv.Release)
}

func (o timedOps) heartbeat(ctx context.Context, by deadline, req *keystorev1.HeartbeatRequest) (*keystorev1.HeartbeatResponse, error) {
	return timed(ctx, by, req, o.kv.Heartbeat)
}

// timed calls method with by on the context.
func timed[Req, Resp any](ctx context.Context, by deadline, req Req, method func(context.Context, Req) (Resp, error)) (Resp, error) {
	ctx, cancel := by.context(ctx)
	defer cancel()
	return method(ctx, req)
}

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
	by := deadlineOf(ctx)
	if len(ops) == 1 {
		results[0] = b.run(ctx, by, ops[0])
	} else {
		var wg sync.WaitGroup
		wg.Add(len(ops))
		for i, op := range ops {
			b.workers.run(func() {
				defer wg.Done()
				results[i] = b.run(ctx, by, op)
			})
		}
		wg.Wait()
	}
	return &keystorev1.BatchResponse{Results: results}, nil
}

// run answers one operation by the deadline by.
func (b *BatchService) run(ctx context.Context, by deadline, op *keystorev1.BatchOperation) *keystorev1.BatchResult {
	out := &keystorev1.BatchResult{}
	var err error
	switch o := op.GetOperation().(type) {
	case *keystorev1.BatchOperation_Claim:
		var r *keystorev1.ClaimResponse
		if r, err = b.ops.claim(ctx, by, o.Claim); err == nil {
			out.Response = &keystorev1.BatchResult_Claim{Claim: r}
		}
	case *keystorev1.BatchOperation_Complete:
		var r *keystorev1.CompleteResponse
		if r, err = b.ops.complete(ctx, by, o.Complete); err == nil {
			out.Response = &keystorev1.BatchResult_Complete{Complete: r}
		}
	case *keystorev1.BatchOperation_Release:
		var r *keystorev1.ReleaseResponse
		if r, err = b.ops.release(ctx, by, o.Release); err == nil {
			out.Response = &keystorev1.BatchResult_Release{Release: r}
		}
	case *keystorev1.BatchOperation_Heartbeat:
		var r *keystorev1.HeartbeatResponse
		if r, err = b.ops.heartbeat(ctx, by, o.Heartbeat); err == nil {
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

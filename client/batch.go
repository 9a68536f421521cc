package client

import (
	"context"
	"sync"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Batching, for a node that does not serve BatchService.Stream (stream.go
// carries the writes otherwise). Writes that callers issue concurrently to
// one node share BatchService.Batch calls: while MaxInflight calls to the node are out, new
// writes queue, and the next call to go out carries everything queued. A
// write that finds a call slot free goes out at once, alone, as the plain
// RPC, so a lone caller waits for nothing and many callers pay one gRPC
// exchange per batch rather than per write. Each write keeps its own
// answer, error and retries (invoke); batching changes only how it travels.

const (
	// maxBatchOps and maxBatchBytes bound one batch (the server accepts
	// up to 1024 operations and a few MiB).
	maxBatchOps   = 512
	maxBatchBytes = 1 << 20
)

// batcher coalesces the writes to one node.
type batcher struct {
	// stream carries the writes, unless nil (batching off) or the node
	// does not serve it.
	stream      *opStream
	kv          keystorev1.KeyStoreServiceClient
	bs          keystorev1.BatchServiceClient
	maxInflight int
	timeout     time.Duration

	mu       sync.Mutex
	inflight int
	queue    []*batchCall
	// unsupported is set when the node does not serve BatchService (an
	// older server): its writes go out one by one.
	unsupported bool
}

// batchCall is one queued write and, once done is closed, its answer.
type batchCall struct {
	ctx  context.Context
	op   *keystorev1.BatchOperation
	size int
	res  *keystorev1.BatchResult
	err  error
	done chan struct{}
	// limit: when the stream's watch gives up on the call (zero: never).
	limit time.Time
	// unsupported: the node does not serve Stream; send it another way.
	unsupported bool
}

// do sends op to the node and returns its result, or the error the plain RPC
// would have returned.
func (b *batcher) do(ctx context.Context, op *keystorev1.BatchOperation, limit time.Time) (*keystorev1.BatchResult, error) {
	if b.stream != nil {
		if res, err, ok := b.stream.do(ctx, op, limit); ok {
			return res, err
		}
	}
	ctx, cancel := bounded(ctx, limit)
	defer cancel()
	b.mu.Lock()
	if b.inflight < b.maxInflight || b.maxInflight <= 0 || b.unsupported {
		b.inflight++
		b.mu.Unlock()
		res, err := callUnary(ctx, b.kv, op)
		b.release()
		return res, err
	}
	c := &batchCall{ctx: ctx, op: op, size: proto.Size(op), done: make(chan struct{})}
	b.queue = append(b.queue, c)
	b.mu.Unlock()
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		// The batch may still carry the write: like a plain RPC given up
		// on, its outcome is unknown to this caller, and the error is the
		// one gRPC gives (an attempt's timeout is retried elsewhere).
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// release frees a call slot, or hands it to the queue's next batch.
func (b *batcher) release() {
	b.mu.Lock()
	batch := b.take()
	if len(batch) == 0 {
		b.inflight--
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	go b.send(batch)
}

// take removes the next batch from the queue: the calls whose callers still
// wait, up to maxBatchOps and maxBatchBytes. b.mu is held.
func (b *batcher) take() []*batchCall {
	var (
		batch []*batchCall
		size  int
		i     int
	)
	for ; i < len(b.queue) && len(batch) < maxBatchOps; i++ {
		c := b.queue[i]
		if c.ctx.Err() != nil {
			continue // its caller is gone
		}
		if len(batch) > 0 && size+c.size > maxBatchBytes {
			break
		}
		batch = append(batch, c)
		size += c.size
	}
	rest := copy(b.queue, b.queue[i:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	return batch
}

// send makes one call for batch, answers every write in it, then releases
// its slot.
func (b *batcher) send(batch []*batchCall) {
	defer b.release()
	b.mu.Lock()
	unsupported := b.unsupported
	b.mu.Unlock()
	if len(batch) == 1 || unsupported {
		b.sendEach(batch)
		return
	}
	req := &keystorev1.BatchRequest{Operations: make([]*keystorev1.BatchOperation, len(batch))}
	for i, c := range batch {
		req.Operations[i] = c.op
	}
	// The batch outlives any one caller's context: it is bounded by the
	// attempt timeout, and each caller stops waiting at its own deadline.
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	resp, err := b.bs.Batch(ctx, req)
	cancel()
	if status.Code(err) == codes.Unimplemented {
		b.mu.Lock()
		b.unsupported = true
		b.mu.Unlock()
		b.sendEach(batch)
		return
	}
	results := resp.GetResults()
	for i, c := range batch {
		switch {
		case err != nil:
			c.err = err
		case i >= len(results):
			c.err = status.Error(codes.Internal, "keystore: batch response lacks a result")
		default:
			c.res, c.err = results[i], BatchResultError(results[i])
		}
		close(c.done)
	}
}

// sendEach sends every call of batch as its own plain RPC, at once.
func (b *batcher) sendEach(batch []*batchCall) {
	var wg sync.WaitGroup
	for _, c := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.res, c.err = callUnary(c.ctx, b.kv, c.op)
			close(c.done)
		}()
	}
	wg.Wait()
}

// BatchResultError returns the error a keystore.v1.BatchService result
// carries, as the gRPC status error the RPC of the same name would have
// returned (status.FromError works on it), or nil. For callers of
// BatchService itself; Client's methods batch on their own.
func BatchResultError(r *keystorev1.BatchResult) error {
	if st := r.GetStatus(); st != nil && st.GetCode() != int32(codes.OK) {
		return status.ErrorProto(st)
	}
	return nil
}

// callUnary sends op as the plain RPC of its kind, its answer wrapped as a
// batch result.
func callUnary(ctx context.Context, kv keystorev1.KeyStoreServiceClient, op *keystorev1.BatchOperation) (*keystorev1.BatchResult, error) {
	switch o := op.GetOperation().(type) {
	case *keystorev1.BatchOperation_Claim:
		r, err := kv.Claim(ctx, o.Claim)
		if err != nil {
			return nil, err
		}
		return &keystorev1.BatchResult{Response: &keystorev1.BatchResult_Claim{Claim: r}}, nil
	case *keystorev1.BatchOperation_Complete:
		r, err := kv.Complete(ctx, o.Complete)
		if err != nil {
			return nil, err
		}
		return &keystorev1.BatchResult{Response: &keystorev1.BatchResult_Complete{Complete: r}}, nil
	case *keystorev1.BatchOperation_Release:
		r, err := kv.Release(ctx, o.Release)
		if err != nil {
			return nil, err
		}
		return &keystorev1.BatchResult{Response: &keystorev1.BatchResult_Release{Release: r}}, nil
	case *keystorev1.BatchOperation_Heartbeat:
		r, err := kv.Heartbeat(ctx, o.Heartbeat)
		if err != nil {
			return nil, err
		}
		return &keystorev1.BatchResult{Response: &keystorev1.BatchResult_Heartbeat{Heartbeat: r}}, nil
	}
	return nil, status.Error(codes.InvalidArgument, "keystore: empty batch operation")
}

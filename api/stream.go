package api

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Stream limits.
const (
	// MaxStreamInflight bounds the operations of one stream that are
	// received and not yet answered: past it the server stops reading the
	// stream until some are answered (flow control pushes back on the
	// sender).
	MaxStreamInflight = 4096
	// MaxStreamTimeout bounds StreamOperation.timeout.
	MaxStreamTimeout = 24 * time.Hour
	// maxStreamResults and maxStreamBytes bound one StreamResponse (a
	// result larger than maxStreamBytes travels alone): a response holding
	// stored bodies (1 MiB each at most) stays within what a gRPC client
	// accepts by default (4 MiB).
	maxStreamResults = 1024
	maxStreamBytes   = 1 << 20
)

// Stream implements BatchService.Stream. A reader goroutine takes
// operations off the stream and hands each to a worker; a worker with a
// result sends it, together with any others that are ready, unless another
// worker is sending (which then takes its result along): results that
// finish together travel together and none waits for a slower one. The
// handler itself waits for the reader to end (the stream broke or the
// caller closed its side) or for Drain, then for the operations in flight.
func (b *BatchService) Stream(st keystorev1.BatchService_StreamServer) error {
	r := &streamReader{b: b, st: st, send: &streamSender{st: st, yields: b.cfg.GatherYields}, slots: make(chan struct{}, MaxStreamInflight)}
	ended := make(chan error, 1)
	go func() { ended <- r.read() }()
	var err error
	select {
	case err = <-ended:
	case <-b.draining:
		err = status.Error(codes.Unavailable, "keystore: the node is shutting down")
	}
	r.mu.Lock()
	r.closed = true // the reader starts nothing more
	r.mu.Unlock()
	r.inflight.Wait()
	if err == nil && r.send.broken() {
		err = status.Error(codes.Unavailable, "keystore: stream send failed")
	}
	return err
}

// streamReader reads one stream's operations and starts them.
type streamReader struct {
	b        *BatchService
	st       keystorev1.BatchService_StreamServer
	send     *streamSender
	slots    chan struct{} // one per operation in flight
	inflight sync.WaitGroup

	mu     sync.Mutex
	closed bool // the handler is ending: start nothing more
}

// read starts operations until the stream ends (nil) or a message breaks
// the limits (INVALID_ARGUMENT).
func (r *streamReader) read() error {
	ctx := r.st.Context()
	for {
		req, err := r.st.Recv()
		if err != nil {
			// io.EOF: the caller sent all it will; what is in flight is
			// still answered. Anything else: the stream is gone.
			return nil
		}
		ops := req.GetOperations()
		if len(ops) == 0 || len(ops) > MaxBatchOperations {
			return invalidArgument([]fieldError{{"operations", fmt.Sprintf("must hold 1-%d operations (got %d)", MaxBatchOperations, len(ops))}})
		}
		for _, op := range ops {
			select {
			case r.slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
			r.mu.Lock()
			if r.closed {
				r.mu.Unlock()
				return nil
			}
			r.inflight.Add(1)
			r.mu.Unlock()
			r.b.workers.run(func() {
				defer r.inflight.Done()
				// Others in flight: this operation's slot is still held.
				r.send.add(&keystorev1.StreamResult{Id: op.GetId(), Result: r.b.runTimed(ctx, op)}, len(r.slots) > 1)
				<-r.slots
			})
		}
	}
}

// runTimed runs one stream operation under its own timeout.
func (b *BatchService) runTimed(ctx context.Context, op *keystorev1.StreamOperation) *keystorev1.BatchResult {
	d := op.GetTimeout()
	if d == nil || d.CheckValid() != nil || d.AsDuration() <= 0 || d.AsDuration() > MaxStreamTimeout {
		err := invalidArgument([]fieldError{{"timeout", fmt.Sprintf("must be set, positive and at most %s", MaxStreamTimeout)}})
		return &keystorev1.BatchResult{Status: status.Convert(err).Proto()}
	}
	return b.run(ctx, deadlineIn(d.AsDuration()), op.GetOperation())
}

// streamSender sends results as workers add them. It is a combiner: the
// worker that finds no one sending sends what is queued, its own result
// and whatever others add meanwhile; the others only queue.
type streamSender struct {
	st      keystorev1.BatchService_StreamServer
	yields  int // bound on the gather's yields (BatchConfig.GatherYields)
	mu      sync.Mutex
	q       []*keystorev1.StreamResult
	sizes   []int // of q's results, encoded
	sending bool
	// failed is set once a send failed: the stream is gone, results are
	// dropped.
	failed bool
}

// add sends r, with whatever else is queued, unless another worker is
// sending (which then takes r along). others tells that other operations
// of the stream are in flight, whose results may join r's message.
func (s *streamSender) add(r *keystorev1.StreamResult, others bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed {
		return
	}
	s.q = append(s.q, r)
	s.sizes = append(s.sizes, proto.Size(r))
	if s.sending {
		return
	}
	s.sending = true
	// Gather: let the workers that are ready to run add their results
	// first, yielding while yielding brought more. The proposers of one
	// applied batch wake together, but a send takes the stream a few
	// microseconds, so without it each found no one sending and sent its
	// result alone (docs/performance-notes.md).
	// A result with no others in flight goes at once.
	for i, n := 0, 0; others && i < s.yields && len(s.q) > n; i++ {
		n = len(s.q)
		s.mu.Unlock()
		runtime.Gosched()
		s.mu.Lock()
	}
	for len(s.q) > 0 && !s.failed {
		n, size := 0, 0
		for n < len(s.q) && n < maxStreamResults && (n == 0 || size+s.sizes[n] <= maxStreamBytes) {
			size += s.sizes[n]
			n++
		}
		q := s.q[:n:n]
		s.q, s.sizes = s.q[n:], s.sizes[n:]
		if len(s.q) == 0 {
			s.q, s.sizes = nil, nil
		}
		s.mu.Unlock()
		err := s.st.Send(&keystorev1.StreamResponse{Results: q})
		s.mu.Lock()
		if err != nil {
			s.failed = true
			s.q, s.sizes = nil, nil
		}
	}
	s.sending = false
}

// broken reports whether a send failed.
func (s *streamSender) broken() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

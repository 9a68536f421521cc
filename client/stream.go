package client

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Streaming. Writes to one node travel over one long-lived
// BatchService.Stream: a write is queued on the stream and sent at once if
// no one is sending, otherwise with whatever the sender takes next (so
// writes issued together share a message, with no bound on how many are in
// flight); each result comes back on its own as soon as the node has it,
// matched by id. A write keeps its own answer, error and retries (invoke).
// A broken stream fails its unanswered writes with the stream's error,
// which invoke treats like a failed call; the next write opens a new
// stream. A node that does not serve Stream (an older server) is used
// through batcher's unary calls instead.

const (
	// maxStreamOps bounds the operations of one StreamRequest (the server
	// accepts up to 1024).
	maxStreamOps = 1024
	// maxStreamTimeout is the server's bound on an operation's timeout.
	maxStreamTimeout = 24 * time.Hour
	// sendRounds bounds the messages a caller sends for others before a
	// goroutine takes over.
	sendRounds = 2
)

// opStream is the stream of writes to one node.
type opStream struct {
	bs      keystorev1.BatchServiceClient
	timeout time.Duration // an operation's timeout when its context has no deadline

	mu          sync.Mutex
	cur         *streamConn   // nil when none is open
	opening     chan struct{} // closed when the stream being opened is (or failed)
	unsupported bool          // the node does not serve Stream
}

// streamConn is one open stream and the writes it carries.
type streamConn struct {
	st     keystorev1.BatchService_StreamClient
	cancel context.CancelFunc
	owner  *opStream

	// Guarded by owner.mu.
	pending  map[uint64]*batchCall // sent or queued, not yet answered
	queue    []queuedOp
	sending  bool
	nextID   uint64
	broken   bool
	watching bool // watch is running
}

// queuedOp is an operation waiting to be sent, with its encoded size.
type queuedOp struct {
	op   *keystorev1.StreamOperation
	size int
}

// do sends op over the stream and returns its result. ok is false when the
// node does not serve Stream: the caller must send op another way. limit,
// unless zero, ends the wait (DEADLINE_EXCEEDED, as a context's deadline
// would) and bounds the operation's timeout on the server; the stream's
// watch enforces it, so no call makes a timer.
func (o *opStream) do(ctx context.Context, op *keystorev1.BatchOperation, limit time.Time) (res *keystorev1.BatchResult, err error, ok bool) {
	timeout := o.timeout
	if dl, has := ctx.Deadline(); has {
		timeout = time.Until(dl)
	}
	if !limit.IsZero() {
		timeout = min(timeout, time.Until(limit))
	}
	if timeout <= 0 {
		return nil, status.FromContextError(context.DeadlineExceeded).Err(), true
	}
	timeout = min(timeout, maxStreamTimeout)
	sc, err := o.conn(ctx)
	if err != nil {
		return nil, err, status.Code(err) != codes.Unimplemented
	}
	// o.mu is held.
	sc.nextID++
	id := sc.nextID
	c := &batchCall{done: make(chan struct{}), limit: limit} // only its answer fields and limit are used here
	sc.pending[id] = c
	if !limit.IsZero() && !sc.watching {
		sc.watching = true
		go sc.watch()
	}
	sop := &keystorev1.StreamOperation{Id: id, Operation: op, Timeout: durationpb.New(timeout)}
	sc.queue = append(sc.queue, queuedOp{sop, proto.Size(sop)})
	send := !sc.sending
	sc.sending = true
	others := len(sc.pending) > 1
	o.mu.Unlock()
	if send && others {
		sc.gather()
	}
	if send && !sc.send(sendRounds) {
		go sc.send(-1)
	}
	select {
	case <-c.done:
		if c.unsupported {
			return nil, nil, false
		}
		return c.res, c.err, true
	case <-ctx.Done():
		o.mu.Lock()
		delete(sc.pending, id)
		o.mu.Unlock()
		// Like a call given up on: the write may still be carried out.
		return nil, status.FromContextError(ctx.Err()).Err(), true
	}
}

// conn returns the open stream, opening one if there is none, with o.mu
// held; or an error (UNIMPLEMENTED if the node does not serve Stream) with
// o.mu released. Opening can wait for the connection: callers wait for it
// only as long as their ctx allows.
func (o *opStream) conn(ctx context.Context) (*streamConn, error) {
	for {
		o.mu.Lock()
		switch {
		case o.unsupported:
			o.mu.Unlock()
			return nil, status.Error(codes.Unimplemented, "keystore: the node does not serve Stream")
		case o.cur != nil:
			return o.cur, nil
		case o.opening != nil:
			ch := o.opening
			o.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		}
		ch := make(chan struct{})
		o.opening = ch
		o.mu.Unlock()
		sc, err := o.open(ctx)
		o.mu.Lock()
		o.opening = nil
		close(ch)
		if err != nil {
			if status.Code(err) == codes.Unimplemented {
				o.unsupported = true
			}
			o.mu.Unlock()
			return nil, err
		}
		o.cur = sc
		return sc, nil
	}
}

// open opens a stream and starts reading it. The stream outlives ctx, but
// opening it is given up when ctx ends first.
func (o *opStream) open(ctx context.Context) (*streamConn, error) {
	sctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, cancel)
	st, err := o.bs.Stream(sctx)
	if !stop() && err == nil {
		err = context.Canceled // ctx ended meanwhile: the stream is being cancelled
	}
	if err != nil {
		cancel()
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, err
	}
	sc := &streamConn{st: st, cancel: cancel, owner: o, pending: make(map[uint64]*batchCall)}
	go sc.recv()
	return sc, nil
}

// gatherYields bounds the yields of gather.
const gatherYields = 4

// gather lets the writes of callers that are ready to run join the queue
// before it is sent: it yields while yielding brought more. Callers woken
// together (by one message of results) issue their next writes together,
// but a send takes the stream a few microseconds, so without it each
// found the stream idle and sent its write alone: at 64 callers 0.92
// stream messages per write, with it 0.09. Only a sender with other writes
// in flight gathers; a lone caller sends at once.
func (sc *streamConn) gather() {
	mu := &sc.owner.mu
	for i, n := 0, 1; i < gatherYields; i++ {
		runtime.Gosched()
		mu.Lock()
		m := len(sc.queue)
		mu.Unlock()
		if m <= n {
			return
		}
		n = m
	}
}

// send sends what is queued, at most rounds messages (no bound if
// negative). It reports whether it left the queue empty (and sending
// unset); if not, the caller must see that someone sends the rest.
func (sc *streamConn) send(rounds int) bool {
	mu := &sc.owner.mu
	mu.Lock()
	defer mu.Unlock()
	for ; len(sc.queue) > 0 && !sc.broken; rounds-- {
		if rounds == 0 {
			return false
		}
		// A message holds up to maxStreamOps operations and, unless one
		// alone is larger, maxBatchBytes.
		n, size := 0, 0
		for n < len(sc.queue) && n < maxStreamOps && (n == 0 || size+sc.queue[n].size <= maxBatchBytes) {
			size += sc.queue[n].size
			n++
		}
		req := &keystorev1.StreamRequest{Operations: make([]*keystorev1.StreamOperation, n)}
		for i := range n {
			req.Operations[i] = sc.queue[i].op
		}
		rest := copy(sc.queue, sc.queue[n:])
		clear(sc.queue[rest:])
		sc.queue = sc.queue[:rest]
		mu.Unlock()
		err := sc.st.Send(req)
		mu.Lock()
		if err != nil {
			// The stream is gone; recv learns why and fails every
			// pending write, queued ones included.
			sc.queue = nil
			break
		}
	}
	sc.sending = false
	return true
}

// recv answers writes as their results arrive, until the stream breaks.
func (sc *streamConn) recv() {
	mu := &sc.owner.mu
	var done []*batchCall
	for {
		resp, err := sc.st.Recv()
		if err != nil {
			sc.fail(err)
			return
		}
		done = done[:0]
		mu.Lock()
		for _, r := range resp.GetResults() {
			c, ok := sc.pending[r.GetId()]
			if !ok {
				continue // its caller gave up
			}
			delete(sc.pending, r.GetId())
			c.res, c.err = r.GetResult(), BatchResultError(r.GetResult())
			done = append(done, c)
		}
		mu.Unlock()
		for _, c := range done {
			close(c.done)
		}
	}
}

// watchInterval is how often a stream with writes in flight looks for
// attempts past their limit: an attempt ends at most this much late.
const watchInterval = 20 * time.Millisecond

// watch ends the wait of writes whose attempt limit passed, as a context
// deadline would have, until the stream has none in flight or breaks. The
// server bounds each write by the same time and answers it then; watch is
// for a node or network that went quiet. One ticker per stream replaces a
// timer per write, which was costly in a busy client
// (docs/performance-notes.md).
func (sc *streamConn) watch() {
	mu := &sc.owner.mu
	t := time.NewTicker(watchInterval)
	defer t.Stop()
	var expired []*batchCall
	for now := range t.C {
		expired = expired[:0]
		mu.Lock()
		if sc.broken || len(sc.pending) == 0 {
			sc.watching = false
			mu.Unlock()
			return
		}
		for id, c := range sc.pending {
			if !c.limit.IsZero() && now.After(c.limit) {
				delete(sc.pending, id)
				expired = append(expired, c)
			}
		}
		mu.Unlock()
		for _, c := range expired {
			c.err = status.FromContextError(context.DeadlineExceeded).Err()
			close(c.done)
		}
	}
}

// fail ends the stream: every unanswered write gets err (or, if the node
// does not serve Stream, goes another way).
func (sc *streamConn) fail(err error) {
	o := sc.owner
	if errors.Is(err, io.EOF) {
		err = status.Error(codes.Unavailable, "keystore: the node ended the stream")
	}
	unsupported := status.Code(err) == codes.Unimplemented
	o.mu.Lock()
	sc.broken = true
	if o.cur == sc {
		o.cur = nil
	}
	if unsupported {
		o.unsupported = true
	}
	pending := sc.pending
	sc.pending = map[uint64]*batchCall{}
	sc.queue = nil
	o.mu.Unlock()
	sc.cancel()
	for _, c := range pending {
		if unsupported {
			c.unsupported = true
		} else {
			c.err = err
		}
		close(c.done)
	}
}

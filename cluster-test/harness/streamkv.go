package harness

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// streamKV sends the workload's writes through BatchService.Stream, over a
// long-lived stream per client and node (kvStream), so that the stream path
// (operations read off a stream, answered by id as each is done, streams
// broken by kills and partitions) is what the checker judges for these
// clients. Get goes through KeyStoreService.
type streamKV struct {
	keystorev1.KeyStoreServiceClient
	s *kvStream
}

// kvStream is one client's stream to one node; the client is sequential, so
// it has at most one operation waiting (and maybe late answers to ones it
// gave up on).
type kvStream struct {
	bs     keystorev1.BatchServiceClient
	st     keystorev1.BatchService_StreamClient
	cancel context.CancelFunc
	answer *answers
	next   uint64
}

// answers is what one stream's reader hands over.
type answers struct {
	results chan *keystorev1.StreamResult // closed when the stream breaks, after err is set
	err     error
}

func (s *kvStream) open() error {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := s.bs.Stream(ctx)
	if err != nil {
		cancel()
		return err
	}
	a := &answers{results: make(chan *keystorev1.StreamResult, 16)}
	s.st, s.cancel, s.answer = st, cancel, a
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = status.Error(codes.Unavailable, "stream ended")
				}
				a.err = err
				close(a.results)
				return
			}
			for _, r := range resp.GetResults() {
				select {
				case a.results <- r:
				case <-ctx.Done():
				}
			}
		}
	}()
	return nil
}

// close drops the stream; the next operation opens a new one.
func (s *kvStream) close() {
	if s.st != nil {
		s.cancel()
		s.st = nil
	}
}

func (s *kvStream) do(ctx context.Context, op *keystorev1.BatchOperation) (*keystorev1.BatchResult, error) {
	if s.st == nil {
		if err := s.open(); err != nil {
			return nil, err
		}
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	s.next++
	id := s.next
	if err := s.st.Send(&keystorev1.StreamRequest{Operations: []*keystorev1.StreamOperation{
		{Id: id, Operation: op, Timeout: durationpb.New(timeout)},
	}}); err != nil {
		s.close()
		return nil, status.Error(codes.Unavailable, "stream send failed")
	}
	for {
		select {
		case r, ok := <-s.answer.results:
			if !ok {
				err := s.answer.err
				s.close()
				return nil, err
			}
			if r.GetId() != id {
				continue // a late answer to an operation given up on
			}
			if err := client.BatchResultError(r.GetResult()); err != nil {
				return nil, err
			}
			return r.GetResult(), nil
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}

func (k streamKV) Claim(ctx context.Context, in *keystorev1.ClaimRequest, _ ...grpc.CallOption) (*keystorev1.ClaimResponse, error) {
	r, err := k.s.do(ctx, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Claim{Claim: in}})
	return r.GetClaim(), err
}

func (k streamKV) Complete(ctx context.Context, in *keystorev1.CompleteRequest, _ ...grpc.CallOption) (*keystorev1.CompleteResponse, error) {
	r, err := k.s.do(ctx, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Complete{Complete: in}})
	return r.GetComplete(), err
}

func (k streamKV) Release(ctx context.Context, in *keystorev1.ReleaseRequest, _ ...grpc.CallOption) (*keystorev1.ReleaseResponse, error) {
	r, err := k.s.do(ctx, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Release{Release: in}})
	return r.GetRelease(), err
}

func (k streamKV) Heartbeat(ctx context.Context, in *keystorev1.HeartbeatRequest, _ ...grpc.CallOption) (*keystorev1.HeartbeatResponse, error) {
	r, err := k.s.do(ctx, &keystorev1.BatchOperation{Operation: &keystorev1.BatchOperation_Heartbeat{Heartbeat: in}})
	return r.GetHeartbeat(), err
}

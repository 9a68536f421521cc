package harness

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// kvStream sends the workload's writes through BatchService.Stream, over a
// long-lived stream per client and node, so that the stream path
// (operations read off a stream, answered by id as each is done, streams
// broken by kills and partitions) is what the checker judges for these
// clients (through opKV; Get goes through KeyStoreService). The client is
// sequential, so a stream has at most one operation waiting (and maybe late
// answers to ones it gave up on).
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

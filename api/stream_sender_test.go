package api

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// captureStream records what is sent on it; its first Send waits for
// release, so that results queue up behind it.
type captureStream struct {
	grpc.ServerStream
	release chan struct{}
	mu      sync.Mutex
	sent    []*keystorev1.StreamResponse
}

func (c *captureStream) Send(r *keystorev1.StreamResponse) error {
	c.mu.Lock()
	first := len(c.sent) == 0
	c.sent = append(c.sent, r)
	c.mu.Unlock()
	if first {
		<-c.release
	}
	return nil
}

func (c *captureStream) Recv() (*keystorev1.StreamRequest, error) { return nil, context.Canceled }

// TestStreamSenderBoundsMessages: results that queue while one is being
// sent go out together, but no message passes maxStreamBytes unless one
// result alone does, so a client with gRPC's default 4 MiB limit takes
// every message.
func TestStreamSenderBoundsMessages(t *testing.T) {
	cs := &captureStream{release: make(chan struct{})}
	s := &streamSender{st: cs, yields: 4}
	result := func(id uint64, body int) *keystorev1.StreamResult {
		return &keystorev1.StreamResult{Id: id, Result: &keystorev1.BatchResult{Response: &keystorev1.BatchResult_Claim{Claim: &keystorev1.ClaimResponse{
			Record: &keystorev1.Record{Response: &keystorev1.Response{Body: bytes.Repeat([]byte("x"), body)}},
		}}}}
	}
	done := make(chan struct{})
	go func() { s.add(result(1, 10), false); close(done) }() // sends, and blocks in Send
	for {
		cs.mu.Lock()
		n := len(cs.sent)
		cs.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	const big = 900 << 10
	for id := uint64(2); id <= 7; id++ {
		s.add(result(id, big), false) // queued behind the blocked send
	}
	for id := uint64(8); id <= 20; id++ {
		s.add(result(id, 10), false)
	}
	close(cs.release)
	<-done
	got := map[uint64]bool{}
	for i, m := range cs.sent {
		if size := proto.Size(m); size > maxStreamBytes+64 && len(m.GetResults()) > 1 {
			t.Errorf("message %d: %d results in %d bytes; want at most %d bytes unless one result", i, len(m.GetResults()), size, maxStreamBytes)
		}
		for _, r := range m.GetResults() {
			if got[r.GetId()] {
				t.Errorf("result %d sent twice", r.GetId())
			}
			got[r.GetId()] = true
		}
	}
	if len(got) != 20 {
		t.Errorf("%d distinct results sent; want 20", len(got))
	}
	if len(cs.sent) >= 20 {
		t.Errorf("%d messages for 20 results; want queued small results to share messages", len(cs.sent))
	}
}

// countStream counts what is sent on it; Send takes next to no time.
type countStream struct {
	grpc.ServerStream
	mu      sync.Mutex
	msgs    int
	results int
}

func (c *countStream) Send(r *keystorev1.StreamResponse) error {
	c.mu.Lock()
	c.msgs++
	c.results += len(r.GetResults())
	c.mu.Unlock()
	return nil
}

func (c *countStream) Recv() (*keystorev1.StreamRequest, error) { return nil, context.Canceled }

// TestResultsFinishedTogetherShareAMessage: results whose workers wake at
// the same moment (as the proposers of one applied batch do) travel in a
// few messages, not one each, even though a send takes next to no time.
func TestResultsFinishedTogetherShareAMessage(t *testing.T) {
	const workers = 64
	for round := range 3 {
		cs := &countStream{}
		s := &streamSender{st: cs, yields: 4}
		gate := make(chan struct{})
		var wg sync.WaitGroup
		for i := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				s.add(&keystorev1.StreamResult{Id: uint64(i + 1)}, true)
			}()
		}
		time.Sleep(10 * time.Millisecond) // every worker waits at the gate
		close(gate)
		wg.Wait()
		if cs.results != workers || cs.msgs > workers/4 {
			t.Fatalf("round %d: %d messages carried %d results; want all %d in at most %d messages", round, cs.msgs, cs.results, workers, workers/4)
		}
		t.Logf("round %d: %d results in %d messages", round, cs.results, cs.msgs)
	}
}

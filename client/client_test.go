package client_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
)

// silentNode listens on 127.0.0.1 and accepts connections but never
// speaks: a node that is stuck, or a black hole.
func silentNode(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = lis.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return lis.Addr().String()
}

func TestNewHonoursItsContext(t *testing.T) {
	node := silentNode(t)
	cfg := client.Config{Endpoints: []string{node, node}}

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if c, err := client.New(cancelled, cfg); !errors.Is(err, context.Canceled) || c != nil {
		t.Fatalf("New with a cancelled context: got %v, %v; want no client and context.Canceled", c, err)
	}
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if c, err := client.New(expired, cfg); !errors.Is(err, context.DeadlineExceeded) || c != nil {
		t.Fatalf("New with an expired context: got %v, %v; want no client and context.DeadlineExceeded", c, err)
	}

	// New waits for no node: it returns before the deadline even though
	// the node never answers, and calls under the context end with it.
	const deadline = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	began := time.Now()
	c, err := client.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New with a live context against a silent node: %v", err)
	}
	defer c.Close()
	if d := time.Since(began); d >= deadline {
		t.Fatalf("New returned after %s; want before its %s deadline", d, deadline)
	}
	_, err = c.Claim(ctx, client.ClaimRequest{Namespace: "new", Key: "k"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Claim on a silent node: got %v; want context.DeadlineExceeded", err)
	}
	if d := time.Since(began); d > deadline+2*time.Second {
		t.Fatalf("Claim on a silent node returned after %s; want soon after the %s deadline", d, deadline)
	}
}

package server_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/internal/testcluster"
)

// BenchmarkLifecycle measures the write path in one process: b.N
// claim+complete lifecycles of fresh keys spread over `conc` workers
// sharing one Go client (which sends to the leader). It is the quick loop
// for profiling (-cpuprofile); bench/ compares keystore with its peers over
// real processes.
func BenchmarkLifecycle(b *testing.B) {
	for _, conc := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("c%d", conc), func(b *testing.B) {
			c := testcluster.Start(b, testcluster.Options{})
			cl, err := client.New(context.Background(), client.Config{Endpoints: c.Endpoints()})
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close()
			time.Sleep(100 * time.Millisecond) // the client finds the leader
			var next atomic.Int64
			var failed atomic.Int64
			body := make([]byte, 200)
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for w := 0; w < conc; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						key := fmt.Sprintf("k%d", i)
						res, err := cl.Claim(ctx, client.ClaimRequest{Namespace: "bench", Key: key})
						if err == nil {
							_, err = cl.Complete(ctx, client.CompleteRequest{Namespace: "bench", Key: key, Token: res.Token,
								Response: client.Response{Code: 200, Body: body}})
						}
						cancel()
						if err != nil {
							failed.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "lifecycles/s")
			if f := failed.Load(); f > 0 {
				b.Fatalf("%d lifecycles failed", f)
			}
		})
	}
}

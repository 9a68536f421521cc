package server_test

import (
	"context"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/expiry"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

var (
	churnDuration  = flag.Duration("churn.duration", 5*time.Minute, "how long BenchmarkChurn writes")
	churnSample    = flag.Duration("churn.sample", 10*time.Second, "BenchmarkChurn's sampling interval")
	churnRetention = flag.Duration("churn.retention", 2*time.Second, "retention of BenchmarkChurn's records")
	churnWorkers   = flag.Int("churn.workers", 32, "concurrent lifecycles in BenchmarkChurn")
	churnSweep     = flag.Bool("churn.sweep", true, "sweep expired records (false: the control run, no expiry)")
)

// BenchmarkChurn is the bounded-space measurement of TTL expiry: a three-node
// cluster on real disks takes a stream of claim+complete lifecycles with a
// short retention, and every sample reports live records and what Pebble
// holds on disk. Disk must stay flat while the total written grows. Run:
//
//	go test -run '^$' -bench Churn -benchtime 1x ./server -churn.duration 5m
func BenchmarkChurn(b *testing.B) {
	for i := 0; i < b.N; i++ {
		runChurn(b)
	}
}

func runChurn(b *testing.B) {
	opts := testcluster.Options{}
	if !*churnSweep {
		opts.Expiry = expiry.Config{Interval: 24 * time.Hour}
	}
	c := testcluster.Start(b, opts)
	var (
		written atomic.Uint64
		failed  atomic.Uint64
		wg      sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), *churnDuration)
	defer cancel()
	end, _ := ctx.Deadline()
	body := make([]byte, 200)
	for w := 0; w < *churnWorkers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cl := c.Client(c.Names[w%3])
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("w%d-%d", w, i)
				// A call that starts less than 5 s before the end fails
				// when the run does; only calls that had their 5 s count.
				fullTime := time.Until(end) > 5*time.Second
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := cl.Claim(rctx, &keystorev1.ClaimRequest{Namespace: "churn", Key: key, Retention: durationpb.New(*churnRetention)})
				if err == nil {
					_, err = cl.Complete(rctx, &keystorev1.CompleteRequest{Namespace: "churn", Key: key, Token: resp.Token,
						Response: &keystorev1.Response{Code: 200, Body: body}})
				}
				rcancel()
				if err != nil {
					if fullTime && failed.Add(1) <= 3 {
						fmt.Printf("failed call: %v\n", err)
					}
					continue
				}
				written.Add(1)
			}
		}(w)
	}

	fmt.Printf("%8s %12s %10s %12s %12s %12s %12s %14s\n", "elapsed", "lifecycles", "live", "disk", "sst", "wal", "max disk", "wal written")
	start := time.Now()
	var atMinute, last, peakLive uint64
	sample := func() {
		lead := c.Leader()
		if lead == "" {
			lead = "n1"
		}
		st := c.Server(lead).Store()
		du := st.DiskUsage()
		var maxDisk uint64
		for _, n := range c.Names {
			maxDisk = max(maxDisk, c.Server(n).Store().DiskUsage().Total)
		}
		live := st.StoredRecords()
		peakLive = max(peakLive, live)
		el := time.Since(start).Round(time.Second)
		fmt.Printf("%8s %12d %10d %12d %12d %12d %12d %14d\n", el, written.Load(), live, du.Total, du.Tables, du.WAL, maxDisk, du.Written)
		if atMinute == 0 && el >= time.Minute {
			atMinute = maxDisk
		}
		last = maxDisk
	}
	tick := time.NewTicker(*churnSample)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			sample()
		}
	}
	tick.Stop()
	wg.Wait()
	sample()
	c.AssertSameState()
	b.ReportMetric(float64(written.Load())/time.Since(start).Seconds(), "lifecycles/s")
	b.ReportMetric(float64(peakLive), "peak-live")
	b.ReportMetric(float64(last), "disk-bytes-end")
	if atMinute > 0 {
		b.ReportMetric(float64(atMinute), "disk-bytes-1m")
		fmt.Printf("disk at 1 min %d, at the end %d (ratio %.2f; target <= 1.5)\n", atMinute, last, float64(last)/float64(atMinute))
	}
	fmt.Printf("lifecycles %d, failed calls %d, peak live records %d; state checksums equal on all three nodes\n",
		written.Load(), failed.Load(), peakLive)
}

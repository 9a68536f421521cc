package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// runFsync measures the disk's limit: each worker appends cfg.ValueSize
// bytes to its own file in dir and fdatasyncs it, in a loop. Every store
// here pays at least one such sync per acknowledged write (keystore and etcd
// on a majority of nodes), so fsyncs/s at concurrency 1 bounds what a
// single synchronous writer can reach.
func runFsync(ctx context.Context, cfg runConfig, dir string) (*result, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	files := make([]*os.File, cfg.Concurrency)
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
				os.Remove(f.Name())
			}
		}
	}()
	for i := range files {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("fsync-%d.dat", i)), os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		files[i] = f
	}
	begin := time.Now()
	w := window{start: begin.Add(cfg.Warmup), end: begin.Add(cfg.Warmup + cfg.Duration)}
	stats := make([]*workerStats, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range stats {
		stats[i] = &workerStats{}
		wg.Add(1)
		go func(f *os.File, s *workerStats) {
			defer wg.Done()
			buf := make([]byte, cfg.ValueSize)
			for ctx.Err() == nil && time.Now().Before(w.end) {
				t0 := time.Now()
				_, err := f.Write(buf)
				if err == nil {
					err = syscall.Fdatasync(int(f.Fd()))
				}
				t1 := time.Now()
				if w.contains(t1) {
					s.attempts++
				}
				if err != nil {
					s.fail(w, t1, "write+fdatasync: %v", err)
					continue
				}
				if w.contains(t1) {
					s.claim = append(s.claim, t1.Sub(t0))
					s.lifecycles++
				}
			}
		}(files[i], stats[i])
	}
	cpu, err := (&cpuMeter{}).measure(ctx, w)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	cfg.Dup = 0
	r := newResult(cfg, w, stats, cpu)
	if r.Lifecycles > 0 {
		r.FsyncCPUUsPerOp = r.ClientCPUS / float64(r.Lifecycles) * 1e6
	}
	return r, nil
}

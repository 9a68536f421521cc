package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// errorFlagRate is the error rate above which a run is flagged as suspect.
const errorFlagRate = 0.01

// result is one run, written as one JSON line. Latencies are milliseconds;
// CPU times seconds. The report reads these lines back.
type result struct {
	Time        string  `json:"time"`
	Backend     string  `json:"backend"`
	Label       string  `json:"label"`
	Concurrency int     `json:"concurrency"`
	DurationS   float64 `json:"duration_s"`
	WarmupS     float64 `json:"warmup_s"`
	Dup         float64 `json:"dup"`
	ValueSize   int     `json:"value_size"`
	// TLS is "" (plaintext), "server" or "mutual" (a client certificate
	// too); Auth is "" or "token" (a bearer token with every call).
	TLS  string `json:"tls,omitempty"`
	Auth string `json:"auth,omitempty"`

	// Lifecycles are fresh claim+complete pairs; for fsync, fsyncs.
	Lifecycles      int64   `json:"lifecycles"`
	Retries         int64   `json:"retries"`
	LifecyclesPerS  float64 `json:"lifecycles_per_s"`
	OpsPerS         float64 `json:"ops_per_s"`
	ClaimP50Ms      float64 `json:"claim_p50_ms"`
	ClaimP99Ms      float64 `json:"claim_p99_ms"`
	CompleteP50Ms   float64 `json:"complete_p50_ms"`
	CompleteP99Ms   float64 `json:"complete_p99_ms"`
	RetryP50Ms      float64 `json:"retry_p50_ms"`
	RetryP99Ms      float64 `json:"retry_p99_ms"`
	Errors          int64   `json:"errors"`
	ErrorRate       float64 `json:"error_rate"`
	ErrorsFlagged   bool    `json:"errors_flagged"`
	Misses          int64   `json:"misses"`
	ServerCPUS      float64 `json:"server_cpu_s"` // -1: not measured
	ServerProcs     int     `json:"server_procs"`
	ServerCPUPer1k  float64 `json:"server_cpu_s_per_1k"`
	ClientCPUS      float64 `json:"client_cpu_s"`
	ClientCPUPer1k  float64 `json:"client_cpu_s_per_1k"`
	FsyncCPUUsPerOp float64 `json:"cpu_us_per_fsync,omitempty"`

	// Leader and LeaderFirst (keystore clusters): which node led, and
	// whether it was the client's first endpoint (else writes were
	// forwarded by a follower).
	Leader      string `json:"leader,omitempty"`
	LeaderFirst *bool  `json:"leader_first,omitempty"`

	NumCPU       int      `json:"nproc"`
	Kernel       string   `json:"kernel"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	MissSamples  []string `json:"miss_samples,omitempty"`
}

func newResult(cfg runConfig, w window, stats []*workerStats, cpu cpuUsage) *result {
	var claimLat, completeLat, retryLat []time.Duration
	r := &result{
		Time:        w.start.UTC().Format(time.RFC3339),
		Backend:     cfg.Backend,
		Label:       cfg.Label,
		Concurrency: cfg.Concurrency,
		DurationS:   w.end.Sub(w.start).Seconds(),
		WarmupS:     cfg.Warmup.Seconds(),
		Dup:         cfg.Dup,
		ValueSize:   cfg.ValueSize,
		TLS:         cfg.TLS,
		Auth:        cfg.Auth,
		NumCPU:      runtime.NumCPU(),
		Kernel:      kernelRelease(),
	}
	var attempts int64
	for _, s := range stats {
		claimLat = append(claimLat, s.claim...)
		completeLat = append(completeLat, s.complete...)
		retryLat = append(retryLat, s.retry...)
		r.Lifecycles += s.lifecycles
		r.Retries += s.retries
		r.Errors += s.errors
		r.Misses += s.misses
		attempts += s.attempts
		for _, e := range s.errSamples {
			if len(r.ErrorSamples) < maxSamples {
				r.ErrorSamples = append(r.ErrorSamples, e)
			}
		}
		for _, e := range s.missSample {
			if len(r.MissSamples) < maxSamples {
				r.MissSamples = append(r.MissSamples, e)
			}
		}
	}
	r.LifecyclesPerS = float64(r.Lifecycles) / r.DurationS
	r.OpsPerS = float64(len(claimLat)+len(completeLat)+len(retryLat)) / r.DurationS
	r.ClaimP50Ms, r.ClaimP99Ms = percentiles(claimLat)
	r.CompleteP50Ms, r.CompleteP99Ms = percentiles(completeLat)
	r.RetryP50Ms, r.RetryP99Ms = percentiles(retryLat)
	if attempts > 0 {
		r.ErrorRate = float64(r.Errors) / float64(attempts)
	}
	r.ErrorsFlagged = r.ErrorRate > errorFlagRate
	r.ServerCPUS, r.ServerProcs, r.ClientCPUS = cpu.server, cpu.serverProcs, cpu.client
	r.ServerCPUPer1k = -1
	if r.ServerCPUS >= 0 && r.Lifecycles > 0 {
		r.ServerCPUPer1k = r.ServerCPUS / float64(r.Lifecycles) * 1000
	}
	if r.Lifecycles > 0 {
		r.ClientCPUPer1k = r.ClientCPUS / float64(r.Lifecycles) * 1000
	}
	return r
}

// percentiles returns p50 and p99 in milliseconds (nearest rank); zero
// without samples.
func percentiles(d []time.Duration) (p50, p99 float64) {
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	at := func(p float64) float64 {
		i := int(p*float64(len(d))+0.999999) - 1
		i = max(0, min(i, len(d)-1))
		return float64(d[i]) / float64(time.Millisecond)
	}
	return at(0.50), at(0.99)
}

// summary is the one-line human version.
func (r *result) summary() string {
	var b strings.Builder
	if r.Backend == "fsync" {
		fmt.Fprintf(&b, "%-12s c=%-3d %8.0f fsyncs/s  p50 %6.2fms p99 %6.2fms  %.1f µs CPU/fsync  errors %d",
			r.Label, r.Concurrency, r.LifecyclesPerS, r.ClaimP50Ms, r.ClaimP99Ms, r.FsyncCPUUsPerOp, r.Errors)
	} else {
		fmt.Fprintf(&b, "%-12s c=%-3d %8.0f lifecycles/s %8.0f ops/s  claim p50 %6.2fms p99 %6.2fms  complete p50 %6.2fms p99 %6.2fms  retry p50 %6.2fms p99 %6.2fms  retries %d  errors %d  misses %d",
			r.Label, r.Concurrency, r.LifecyclesPerS, r.OpsPerS, r.ClaimP50Ms, r.ClaimP99Ms,
			r.CompleteP50Ms, r.CompleteP99Ms, r.RetryP50Ms, r.RetryP99Ms, r.Retries, r.Errors, r.Misses)
		if r.ServerCPUS >= 0 {
			fmt.Fprintf(&b, "  server CPU %.2fs (%.3fs/1k, %d procs)", r.ServerCPUS, r.ServerCPUPer1k, r.ServerProcs)
		}
		fmt.Fprintf(&b, "  client CPU %.2fs", r.ClientCPUS)
	}
	if r.ErrorsFlagged {
		fmt.Fprintf(&b, "  !! ERROR RATE %.1f%% > %.0f%%: results suspect", r.ErrorRate*100, errorFlagRate*100)
		if len(r.ErrorSamples) > 0 {
			fmt.Fprintf(&b, " (first: %s)", r.ErrorSamples[0])
		}
	}
	return b.String()
}

func (r *result) appendJSON(path string) error {
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

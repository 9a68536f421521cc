package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseValue(t *testing.T) {
	fp := bytes.Repeat([]byte{'|'}, fingerprintLen) // separators inside the fingerprint
	other := bytes.Repeat([]byte{'x'}, fingerprintLen)
	resp := []byte("C|body|with|bars")
	tests := []struct {
		name    string
		v, fp   []byte
		want    claim
		wantErr bool
	}{
		{name: "pending", v: pendingValue(fp), fp: fp, want: claim{}},
		{name: "completed", v: completedValue(fp, resp), fp: fp, want: claim{Completed: true, Response: resp}},
		{name: "completed empty response", v: completedValue(fp, nil), fp: fp, want: claim{Completed: true, Response: []byte{}}},
		{name: "fingerprint mismatch", v: completedValue(other, resp), fp: fp, wantErr: true},
		{name: "truncated", v: []byte("C|"), fp: fp, wantErr: true},
		{name: "unknown state", v: append([]byte("X|"), fp...), fp: fp, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseValue(tt.v, tt.fp)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseValue: got error %v; want error %v", err, tt.wantErr)
			}
			if err == nil && (got.Completed != tt.want.Completed || !bytes.Equal(got.Response, tt.want.Response)) {
				t.Fatalf("parseValue: got %+v; want %+v", got, tt.want)
			}
		})
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	p50, p99 := percentiles(d)
	if p50 != 50 || p99 != 99 {
		t.Fatalf("percentiles(1..100ms): got p50 %v p99 %v; want 50 99", p50, p99)
	}
	if p50, p99 := percentiles(nil); p50 != 0 || p99 != 0 {
		t.Fatalf("percentiles(nil): got %v %v; want 0 0", p50, p99)
	}
}

func TestReadProcStatSelf(t *testing.T) {
	st, err := readProcStat(os.Getpid())
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if st.comm == "" {
		t.Fatal("readProcStat(self): empty comm")
	}
	m, err := newCPUMeter("", "^"+st.comm+"$")
	if err != nil {
		t.Fatal(err)
	}
	if _, n, err := m.sample(); err != nil || n < 1 {
		t.Fatalf("sample by comm %q: got %d processes, %v; want at least this one", st.comm, n, err)
	}
}

// memStore is an in-memory store; corrupt makes it replay a wrong byte.
type memStore struct {
	mu      sync.Mutex
	recs    map[string][]byte
	corrupt bool
}

func (m *memStore) Claim(_ context.Context, key string, fp []byte) (claim, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.recs[key]
	if !ok {
		m.recs[key] = pendingValue(fp)
		return claim{Acquired: true}, nil
	}
	c, err := parseValue(v, fp)
	if m.corrupt && c.Completed && len(c.Response) > 0 {
		c.Response = append([]byte(nil), c.Response...)
		c.Response[0] ^= 1
	}
	return c, err
}

func (m *memStore) Complete(_ context.Context, key string, fp []byte, _ claim, resp []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.recs[key]; !ok {
		return errors.New("no claim")
	}
	m.recs[key] = completedValue(fp, resp)
	return nil
}

func (m *memStore) Close() error { return nil }

func TestRunLifecyclesCountsMisses(t *testing.T) {
	cfg := runConfig{Backend: "mem", Label: "mem", Concurrency: 4, Duration: 200 * time.Millisecond,
		Warmup: 50 * time.Millisecond, Dup: 0.3, ValueSize: 64, OpTimeout: time.Second}
	for _, corrupt := range []bool{false, true} {
		st := &memStore{recs: map[string][]byte{}, corrupt: corrupt}
		res, err := runLifecycles(context.Background(), cfg, st, &cpuMeter{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Lifecycles == 0 || res.Retries+res.Misses == 0 {
			t.Fatalf("corrupt=%v: got %d lifecycles, %d retries, %d misses; want some of each kind", corrupt, res.Lifecycles, res.Retries, res.Misses)
		}
		if got := res.Misses > 0; got != corrupt {
			t.Fatalf("corrupt=%v: got %d misses (%v)", corrupt, res.Misses, res.MissSamples)
		}
		if res.Errors != 0 {
			t.Fatalf("corrupt=%v: got %d errors (%v); want 0", corrupt, res.Errors, res.ErrorSamples)
		}
	}
}

func TestReport(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw.jsonl")
	tr := true
	runs := []result{
		{Backend: "fsync", Label: "fsync", Concurrency: 1, LifecyclesPerS: 5000, FsyncCPUUsPerOp: 20, Time: "2026-01-01T00:00:00Z"},
		{Backend: "keystore", Label: "keystore-3", Concurrency: 1, LifecyclesPerS: 300, ClaimP50Ms: 1, ClaimP99Ms: 4, Leader: "n1", LeaderFirst: &tr, Time: "2026-01-01T00:00:01Z"},
		{Backend: "keystore", Label: "keystore-3", Concurrency: 16, LifecyclesPerS: 1500, ClaimP50Ms: 4, ClaimP99Ms: 20, Time: "2026-01-01T00:00:02Z"},
		{Backend: "etcd", Label: "etcd-3", Concurrency: 1, LifecyclesPerS: 250, ClaimP50Ms: 1.2, ClaimP99Ms: 5, Time: "2026-01-01T00:00:03Z"},
		{Backend: "etcd", Label: "etcd-3", Concurrency: 16, LifecyclesPerS: 1000, ClaimP50Ms: 6, ClaimP99Ms: 30, Time: "2026-01-01T00:00:04Z"},
		{Backend: "redis", Label: "redis-1", Concurrency: 16, LifecyclesPerS: 10000, ClaimP50Ms: 0.5, ClaimP99Ms: 2, Misses: 1, Time: "2026-01-01T00:00:05Z"},
	}
	for _, r := range runs {
		if err := r.appendJSON(raw); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "out")
	if err := reportCmd([]string{"-in", raw, "-out", out}); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"### Concurrency 16", "| keystore-3 / etcd-3 | 1.50× | 0.67× | 0.67× |", "**1 MISSES**", "5000 fdatasyncs/s", "leaders over 1 runs: n1 ×1 (the first endpoint led in 1)"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("results.md lacks %q:\n%s", want, md)
		}
	}
	for _, f := range []string{"throughput.svg", "p99.svg"} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		d := xml.NewDecoder(bytes.NewReader(b))
		for {
			if _, err := d.Token(); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("%s is not well-formed XML: %v", f, err)
				}
				break
			}
		}
	}
	if _, err := os.Stat(filepath.Join(out, "raw.jsonl")); err != nil {
		t.Fatalf("raw results not copied beside the report: %v", err)
	}
}

package main

import (
	"bufio"
	"strings"
	"testing"
	"time"
)

func TestParseVmRSS(t *testing.T) {
	status := "Name:\tkeystored\nVmPeak:\t 2000 kB\nVmRSS:\t  123456 kB\nRssAnon:\t 100 kB\n"
	got, err := parseVmRSS(bufio.NewScanner(strings.NewReader(status)))
	if err != nil || got != 123456<<10 {
		t.Fatalf("parseVmRSS = %d, %v; want %d", got, err, 123456<<10)
	}
	if _, err := parseVmRSS(bufio.NewScanner(strings.NewReader("Name:\tx\n"))); err == nil {
		t.Fatal("parseVmRSS without a VmRSS line: want an error")
	}
}

func TestScanSnapLog(t *testing.T) {
	// As slog's JSON handler writes them: durations in nanoseconds.
	logText := `{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"serving","client_addr":"127.0.0.1:27001"}
{"time":"2026-01-01T00:00:01Z","level":"WARN","msg":"sending snapshot failed; retrying after a backoff","peer":"ab","index":7,"bytes":10,"backoff":1000000000,"err":"broken pipe"}
{"time":"2026-01-01T00:00:02Z","level":"INFO","msg":"sent snapshot","peer":"ab","index":9000,"bytes":22485520,"duration":1500000000}
not json
{"time":"2026-01-01T00:00:02Z","level":"INFO","msg":"received snapshot","from":"cd","index":9000,"bytes":22485520,"duration":"1.25s"}
{"time":"2026-01-01T00:00:03Z","level":"INFO","msg":"applied snapshot","index":9000,"term":2,"tables":3,"records":59459}
`
	var l snapLog
	if err := scanSnapLog(&l, "n2", strings.NewReader(logText)); err != nil {
		t.Fatal(err)
	}
	if len(l.Sent) != 1 || l.Sent[0].Bytes != 22485520 || l.Sent[0].DurationMs != 1500 || l.Sent[0].Index != 9000 {
		t.Errorf("sent = %+v", l.Sent)
	}
	if len(l.Received) != 1 || l.Received[0].DurationMs != 1250 {
		t.Errorf("received = %+v", l.Received)
	}
	if len(l.Applied) != 1 || l.Applied[0].Tables != 3 || l.Applied[0].Records != 59459 {
		t.Errorf("applied = %+v", l.Applied)
	}
	if l.SendFailures != 1 || !strings.Contains(l.FirstFailure, "broken pipe") {
		t.Errorf("failures = %d, %q", l.SendFailures, l.FirstFailure)
	}
}

func TestLargeMarkdown(t *testing.T) {
	r := &largeReport{Time: "now", NumCPU: 2, FsyncsPerS: 1234.4, Flags: "--keep-entries 5"}
	r.Throughput = []*largeThroughput{
		{State: "empty", Run: &result{Concurrency: 64, DurationS: 10, LifecyclesPerS: 5000}},
		{State: "1,000 records", Target: 1000, Records: 1500, Preloaded: 1000, PreloadS: 2, PreloadPerS: 500,
			Run: &result{LifecyclesPerS: 3500}, VsEmpty: 0.7},
		{State: "2,000 records", Target: 2000},
	}
	r.Restarts = []*largeRestart{{State: "1,000 records", Node: "n1", StopS: 0.1, ListenS: 0.2, ServingS: 0.3}}
	r.CatchUps = []*largeCatchUp{{State: "1,000 records", Leader: "n2", Follower: "n1", Written: 100, Entries: 50,
		SnapshotExpected: true, CatchUpS: 1.5, ServingS: 1.6,
		Snapshot:  snapLog{Sent: []snapEvent{{Bytes: 22_000_000, DurationMs: 800}}, Applied: []snapEvent{{Tables: 1}}},
		RSSBefore: map[string]int64{"n1": 90e6, "n2": 100e6}, RSSPeak: map[string]int64{"n1": 95e6, "n2": 120e6, "n3": 80e6},
		ChecksumErr: "state checksums differ | at 7"}}
	md := r.markdown()
	for _, want := range []string{
		"1,234 fdatasyncs/s",
		"| 1,000 records | 1,500 | 1,000 in 2 s (500/s) |",
		"**0.70×** (< 0.8)",
		"| 2,000 records | 0 | — | — | — (—) | failed |",
		"22 MB in 0.8 s (1 table)",
		"100 MB → 120 MB | 90 MB → 95 MB | 80 MB |",
		`state checksums differ \| at 7`,
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestCommas(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 5_000_000: "5,000,000", -12345: "-12,345"} {
		if got := commas(n); got != want {
			t.Errorf("commas(%d) = %q; want %q", n, got, want)
		}
	}
}

func TestMembershipMarkdown(t *testing.T) {
	r := &largeReport{Time: "now", NumCPU: 2, Only: "membership", MemberRate: 300, MemberWorkers: 16, ElectionBoundS: 2}
	r.Preloads = []*largePreload{{State: "1,000 records", Target: 1000, Preloaded: 1000, PreloadS: 2, PreloadPerS: 500}}
	snap := snapLog{Sent: []snapEvent{{Node: "n1", Bytes: 450_000_000, DurationMs: 3900}},
		Received: []snapEvent{{Node: "n4"}}, Applied: []snapEvent{{Node: "n4", Tables: 4}}}
	r.Joins = []*largeJoin{{State: "1,000 records", Node: "n4", Leader: "n1", Records: 1500,
		memberTimes: memberTimes{LearnerS: 0.3, VoterS: 5.5, ServingS: 5.2, CaughtUpS: 5.4},
		Snapshot:    snap, BySnapshot: true, RSSPeak: map[string]int64{"n1": 600e6, "n4": 400e6}, ChecksumAt: 77,
		RemoveS: 0.05, ExitS: 4.5, ExitCode: 0,
		Load: &pacedStats{TargetPerS: 300, Workers: 16, Stored: 3000, DurationS: 10, LongestGapS: 0.25, GapStartS: 1.5}}}
	r.Replaces = []*largeReplace{{State: "1,000 records", Node: "n3", OldID: "aa", NewID: "bb", RemovedS: 0.1, StartS: 0.15,
		memberTimes:   memberTimes{LearnerS: 0.5, VoterS: 6, ServingS: 5.8, CaughtUpS: 5.9},
		VoterServingS: 6, Snapshot: snapLog{}, BySnapshot: false,
		Load: &pacedStats{TargetPerS: 300, Stored: 2000, DurationS: 10, LongestGapS: 2.5, GapStartS: -0.1}}}
	md := r.markdown()
	for _, want := range []string{
		"## Preload",
		"| 1,000 records | 1,000 | 2 s | 500 | 0 |",
		"## Membership",
		"| 1,000 records | 1,500 | — (—) | 0.30 s | 5.50 s | 5.20 s | 5.40 s | 450 MB in 3.9 s (4 tables) | 600 MB | 400 MB | 3,000 in 10 s (300/s), 0 errors | 0.250 s at +1.5 s | equal at 77 | 50.0 ms → 4.50 s (0) |",
		"| 1,000 records | n3 (aa → bb) | 0.10 s | 0.15 s | 0.50 s | 6.00 s | 5.80 s | 5.90 s | **6.00 s** | **none received and applied** |",
		"**2.500 s at -0.1 s**",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestPacedGap(t *testing.T) {
	p := &pacedLoad{rate: 1, cancel: func() {}}
	t0 := time.Now()
	p.begin, p.last = t0, t0
	p.completed(t0.Add(100 * time.Millisecond))
	p.completed(t0.Add(1500 * time.Millisecond)) // the gap: 0.1 s → 1.5 s
	p.completed(t0.Add(1400 * time.Millisecond)) // out of order: ignored
	p.completed(t0.Add(1600 * time.Millisecond))
	s := p.stop(t0.Add(time.Second))
	if s.LongestGapS < 1.39 || s.LongestGapS > 1.41 || s.GapStartS < -0.91 || s.GapStartS > -0.89 {
		t.Errorf("gap %.3f s at %+.3f s; want 1.4 s at -0.9 s", s.LongestGapS, s.GapStartS)
	}
}

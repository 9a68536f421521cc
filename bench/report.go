package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// reportCmd turns the JSON lines of a session into results.md and the
// charts.
func reportCmd(args []string) error {
	fs := flag.NewFlagSet("keystore-bench report", flag.ContinueOnError)
	in := fs.String("in", "", "raw results (JSON lines) of keystore-bench runs")
	out := fs.String("out", "results", "directory for results.md, throughput.svg and p99.svg")
	command := fs.String("command", "", "the command that produced the runs, quoted in results.md")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" {
		return errors.New("report: -in is required")
	}
	runs, err := readResults(*in)
	if err != nil {
		return err
	}
	if len(runs) == 0 {
		return fmt.Errorf("report: %s holds no results", *in)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	if err := copyRaw(*in, *out); err != nil {
		return err
	}
	rep := summarize(runs)
	if err := os.WriteFile(filepath.Join(*out, "throughput.svg"), rep.chart("Lifecycles per second (median)", "lifecycles/s", false,
		func(m medians) float64 { return m.LifecyclesPerS }), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "p99.svg"), rep.chart("Claim latency, p99 (median of runs)", "claim p99 (ms)", true,
		func(m medians) float64 { return m.ClaimP99Ms }), 0o644); err != nil {
		return err
	}
	md := rep.markdown(filepath.Base(*in), *command)
	if err := os.WriteFile(filepath.Join(*out, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Printf("report: %d runs -> %s\n", len(runs), filepath.Join(*out, "results.md"))
	return nil
}

func readResults(path string) ([]result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var runs []result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		runs = append(runs, r)
	}
	return runs, sc.Err()
}

// copyRaw keeps the raw lines beside the report unless they are there.
func copyRaw(in, outDir string) error {
	dst := filepath.Join(outDir, filepath.Base(in))
	if a, err := filepath.Abs(in); err == nil {
		if b, err := filepath.Abs(dst); err == nil && a == b {
			return nil
		}
	}
	src, err := os.Open(in)
	if err != nil {
		return err
	}
	defer src.Close()
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// medians are one system's numbers at one concurrency: the median of each
// metric over the repetitions (so one row may mix repetitions), errors and
// misses summed.
type medians struct {
	Reps                       int
	LifecyclesPerS             float64
	ClaimP50Ms, ClaimP99Ms     float64
	CompleteP50Ms, CompleteP99 float64
	RetryP99Ms                 float64
	ServerCPUPer1k             float64 // -1: not measured
	ClientCPUPer1k             float64
	Errors, Misses             int64
	Flagged                    int // runs with an error rate over 1%
}

type summary struct {
	systems       []string // labels in display order
	backendOf     map[string]string
	tlsOf         map[string]string // result.TLS of the label's first run
	concurrencies []int
	cells         map[string]map[int]medians
	fsync         map[int]medians
	fsyncCPUUs    map[int]float64
	runs          []result
}

func summarize(runs []result) *summary {
	s := &summary{
		backendOf:  map[string]string{},
		tlsOf:      map[string]string{},
		cells:      map[string]map[int]medians{},
		fsync:      map[int]medians{},
		fsyncCPUUs: map[int]float64{},
		runs:       runs,
	}
	groups := map[string]map[int][]result{}
	fsyncRuns := map[int][]result{}
	concSet := map[int]bool{}
	for _, r := range runs {
		if r.Backend == "fsync" {
			fsyncRuns[r.Concurrency] = append(fsyncRuns[r.Concurrency], r)
			continue
		}
		if groups[r.Label] == nil {
			groups[r.Label] = map[int][]result{}
			s.systems = append(s.systems, r.Label)
			s.backendOf[r.Label] = r.Backend
			s.tlsOf[r.Label] = r.TLS
		}
		groups[r.Label][r.Concurrency] = append(groups[r.Label][r.Concurrency], r)
		concSet[r.Concurrency] = true
	}
	rank := func(label string) int {
		order := []string{"keystore", "etcd", "redis", "postgres"}
		i := slices.Index(order, s.backendOf[label])
		if i < 0 {
			i = len(order)
		}
		return i
	}
	sort.SliceStable(s.systems, func(i, j int) bool {
		a, b := s.systems[i], s.systems[j]
		if rank(a) != rank(b) {
			return rank(a) < rank(b)
		}
		// Plaintext first, then each TLS mode.
		if s.tlsOf[a] != s.tlsOf[b] {
			return s.tlsOf[a] < s.tlsOf[b]
		}
		// keystore-3 before keystore-1: the replicated one is the headline.
		return a > b
	})
	for c := range concSet {
		s.concurrencies = append(s.concurrencies, c)
	}
	slices.Sort(s.concurrencies)
	for label, byConc := range groups {
		s.cells[label] = map[int]medians{}
		for c, rs := range byConc {
			s.cells[label][c] = medianOf(rs)
		}
	}
	for c, rs := range fsyncRuns {
		s.fsync[c] = medianOf(rs)
		s.fsyncCPUUs[c] = median(rs, func(r result) float64 { return r.FsyncCPUUsPerOp })
	}
	return s
}

func medianOf(rs []result) medians {
	m := medians{
		Reps:           len(rs),
		LifecyclesPerS: median(rs, func(r result) float64 { return r.LifecyclesPerS }),
		ClaimP50Ms:     median(rs, func(r result) float64 { return r.ClaimP50Ms }),
		ClaimP99Ms:     median(rs, func(r result) float64 { return r.ClaimP99Ms }),
		CompleteP50Ms:  median(rs, func(r result) float64 { return r.CompleteP50Ms }),
		CompleteP99:    median(rs, func(r result) float64 { return r.CompleteP99Ms }),
		RetryP99Ms:     median(rs, func(r result) float64 { return r.RetryP99Ms }),
		ServerCPUPer1k: median(rs, func(r result) float64 { return r.ServerCPUPer1k }),
		ClientCPUPer1k: median(rs, func(r result) float64 { return r.ClientCPUPer1k }),
	}
	for _, r := range rs {
		m.Errors += r.Errors
		m.Misses += r.Misses
		if r.ErrorsFlagged {
			m.Flagged++
		}
	}
	return m
}

// median of f over rs; the mean of the middle two for an even count.
func median(rs []result, f func(result) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// tlsModes are the result.TLS values of the runs, plaintext ("") first.
func (s *summary) tlsModes() []string {
	var out []string
	for _, l := range s.systems {
		if !slices.Contains(out, s.tlsOf[l]) {
			out = append(out, s.tlsOf[l])
		}
	}
	slices.Sort(out)
	return out
}

// headline is the keystore system the ratios of one TLS mode are about:
// keystore-3 if present, else the first keystore label of that mode.
func (s *summary) headline(tls string) string {
	if slices.Contains(s.systems, "keystore-3") && s.tlsOf["keystore-3"] == tls {
		return "keystore-3"
	}
	for _, l := range s.systems {
		if s.backendOf[l] == "keystore" && s.tlsOf[l] == tls {
			return l
		}
	}
	return ""
}

// peers are the first label of each other backend in one TLS mode, in
// display order: keystore over TLS is compared with its peers over TLS.
func (s *summary) peers(tls string) []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range s.systems {
		b := s.backendOf[l]
		if b == "keystore" || seen[b] || s.tlsOf[l] != tls {
			continue
		}
		seen[b] = true
		out = append(out, l)
	}
	return out
}

// title names the peers compared with keystore, e.g. "keystore against
// etcd, Redis and PostgreSQL".
func (s *summary) title() string {
	display := map[string]string{"etcd": "etcd", "redis": "Redis", "postgres": "PostgreSQL"}
	var names []string
	for _, l := range s.systems {
		n, ok := display[s.backendOf[l]]
		if ok && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	t := "keystore"
	switch len(names) {
	case 0:
	case 1:
		t += " against " + names[0]
	default:
		t += " against " + strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
	}
	switch modes := s.tlsModes(); {
	case len(modes) > 1:
		t += ", with and without TLS"
	case len(modes) == 1 && modes[0] != "":
		t += ", over TLS"
	}
	return t
}

func (s *summary) markdown(rawName, command string) string {
	var b strings.Builder
	b.WriteString("# " + s.title() + "\n\n")
	b.WriteString("Generated by `keystore-bench report` from `" + rawName + "` (raw runs, one JSON line each, beside this file). ")
	b.WriteString("See `bench/README.md` for the workload, the durability settings and the caveats.\n\n")
	if command != "" {
		b.WriteString("Command: `" + command + "`\n\n")
	}
	s.writeSecurity(&b)
	s.writeMachine(&b)

	b.WriteString("## Results per concurrency\n\n")
	b.WriteString("Medians over repetitions of each metric separately; errors and misses are totals over the repetitions. ")
	b.WriteString("A lifecycle is Claim of a fresh key + Complete; 10% (by default) of operations are retries of completed keys (not counted as lifecycles). ")
	b.WriteString("Latencies in ms. CPU in seconds per 1,000 lifecycles: server = all server processes summed (all nodes for a cluster), client = this benchmark process.\n\n")
	for _, c := range s.concurrencies {
		fmt.Fprintf(&b, "### Concurrency %d\n\n", c)
		b.WriteString("| system | reps | lifecycles/s | claim p50 | claim p99 | complete p50 | complete p99 | retry p99 | server CPU s/1k | client CPU s/1k | errors | misses |\n")
		b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, l := range s.systems {
			m, ok := s.cells[l][c]
			if !ok {
				continue
			}
			cpu := "n/a"
			if m.ServerCPUPer1k >= 0 {
				cpu = fmt.Sprintf("%.3f", m.ServerCPUPer1k)
			}
			errs := fmt.Sprintf("%d", m.Errors)
			if m.Flagged > 0 {
				errs += fmt.Sprintf(" **(%d run(s) > 1%%)**", m.Flagged)
			}
			misses := fmt.Sprintf("%d", m.Misses)
			if m.Misses > 0 {
				misses = "**" + misses + " MISSES**"
			}
			fmt.Fprintf(&b, "| %s | %d | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %s | %.3f | %s | %s |\n",
				l, m.Reps, m.LifecyclesPerS, m.ClaimP50Ms, m.ClaimP99Ms, m.CompleteP50Ms, m.CompleteP99,
				m.RetryP99Ms, cpu, m.ClientCPUPer1k, errs, misses)
		}
		b.WriteString("\n")
		s.writeRatios(&b, c)
	}
	s.writeFlagged(&b)
	b.WriteString("## Charts\n\n![lifecycles per second](throughput.svg)\n\n![claim p99](p99.svg)\n")
	return b.String()
}

func (s *summary) writeMachine(b *strings.Builder) {
	b.WriteString("## Machine and date\n\n")
	first, last := s.runs[0].Time, s.runs[0].Time
	nproc, kernel := s.runs[0].NumCPU, s.runs[0].Kernel
	for _, r := range s.runs {
		first, last = min(first, r.Time), max(last, r.Time)
	}
	host, _ := os.Hostname()
	fmt.Fprintf(b, "- machine: %d CPUs (nproc), Linux %s, host %s; every server and the client share it\n", nproc, kernel, host)
	fmt.Fprintf(b, "- runs: %s to %s (UTC); report written %s\n", first, last, time.Now().UTC().Format(time.RFC3339))
	s.writeLeaders(b)
	if len(s.fsync) == 0 {
		b.WriteString("- disk: not measured (no fsync run)\n\n")
		return
	}
	conc := make([]int, 0, len(s.fsync))
	for c := range s.fsync {
		conc = append(conc, c)
	}
	slices.Sort(conc)
	for _, c := range conc {
		m := s.fsync[c]
		fmt.Fprintf(b, "- disk: %.0f fdatasyncs/s with %d writer(s) (append %d B + fdatasync; p50 %.2f ms, p99 %.2f ms; %.1f µs CPU per fsync; median of %d run(s))\n",
			m.LifecyclesPerS, c, s.valueSize(), m.ClaimP50Ms, m.ClaimP99Ms, s.fsyncCPUUs[c], m.Reps)
	}
	b.WriteString("\n")
}

func (s *summary) valueSize() int {
	for _, r := range s.runs {
		if r.Backend == "fsync" {
			return r.ValueSize
		}
	}
	return 0
}

// writeRatios compares, per TLS mode, the headline keystore with each peer
// of the same mode: throughput ratio > 1 and latency ratios < 1 favour
// keystore. Then, per backend run both ways, what TLS costs it.
func (s *summary) writeRatios(b *strings.Builder, c int) {
	var rows []string
	for _, mode := range s.tlsModes() {
		ks := s.headline(mode)
		k, ok := s.cells[ks][c]
		if ks == "" || !ok {
			continue
		}
		for _, p := range s.peers(mode) {
			m, ok := s.cells[p][c]
			if !ok {
				continue
			}
			rows = append(rows, fmt.Sprintf("| %s / %s | %s | %s | %s |", ks, p,
				ratio(k.LifecyclesPerS, m.LifecyclesPerS), ratio(k.ClaimP99Ms, m.ClaimP99Ms), ratio(k.ClaimP50Ms, m.ClaimP50Ms)))
		}
	}
	if len(rows) > 0 {
		b.WriteString("| ratio | throughput (>1: keystore faster) | claim p99 (<1: keystore lower) | claim p50 (<1: keystore lower) |\n|---|--:|--:|--:|\n")
		b.WriteString(strings.Join(rows, "\n") + "\n\n")
	}

	rows = rows[:0]
	for _, pair := range s.tlsPairs() {
		plain, ok1 := s.cells[pair[0]][c]
		secure, ok2 := s.cells[pair[1]][c]
		if !ok1 || !ok2 {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %s / %s | %s | %s | %s |", pair[1], pair[0],
			ratio(secure.LifecyclesPerS, plain.LifecyclesPerS), ratio(secure.ClaimP99Ms, plain.ClaimP99Ms), ratio(secure.ClaimP50Ms, plain.ClaimP50Ms)))
	}
	if len(rows) > 0 {
		b.WriteString("| cost of TLS (and auth) | throughput (<1: slower with it) | claim p99 (>1: higher with it) | claim p50 (>1: higher with it) |\n|---|--:|--:|--:|\n")
		b.WriteString(strings.Join(rows, "\n") + "\n\n")
	}
}

// tlsPairs are, per backend run both in plaintext and over TLS, its first
// plaintext label and its first TLS label (keystore: the headlines).
func (s *summary) tlsPairs() [][2]string {
	var out [][2]string
	seen := map[string]bool{}
	for _, l := range s.systems {
		be := s.backendOf[l]
		if seen[be] || s.tlsOf[l] != "" {
			continue
		}
		plain := l
		if be == "keystore" {
			plain = s.headline("")
		}
		for _, t := range s.systems {
			if s.backendOf[t] != be || s.tlsOf[t] == "" {
				continue
			}
			secure := t
			if be == "keystore" {
				secure = s.headline(s.tlsOf[t])
			}
			out = append(out, [2]string{plain, secure})
			break
		}
		seen[be] = true
	}
	return out
}

// writeSecurity says, when some runs used TLS, how each such system was
// reached.
func (s *summary) writeSecurity(b *strings.Builder) {
	var lines []string
	for _, l := range s.systems {
		var r *result
		for i := range s.runs {
			if s.runs[i].Label == l {
				r = &s.runs[i]
				break
			}
		}
		if r == nil || r.TLS == "" {
			continue
		}
		how := "TLS, the servers' certificates verified"
		if r.TLS == "mutual" {
			how = "mutual TLS (the client presents a certificate of the servers' CA)"
		}
		if r.Auth == "token" {
			how += ", and a bearer token with every call"
		}
		lines = append(lines, fmt.Sprintf("- %s: %s", l, how))
	}
	if len(lines) == 0 {
		return
	}
	b.WriteString("How the clients reached the servers over TLS (the other systems: plaintext, no credentials):\n\n")
	b.WriteString(strings.Join(lines, "\n") + "\n\n")
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func (s *summary) writeFlagged(b *strings.Builder) {
	var lines []string
	for _, r := range s.runs {
		if r.Misses > 0 || r.ErrorsFlagged {
			l := fmt.Sprintf("- %s %s c=%d: errors %d (%.1f%%), misses %d", r.Time, r.Label, r.Concurrency, r.Errors, r.ErrorRate*100, r.Misses)
			if len(r.MissSamples) > 0 {
				l += "; first miss: `" + r.MissSamples[0] + "`"
			} else if len(r.ErrorSamples) > 0 {
				l += "; first error: `" + r.ErrorSamples[0] + "`"
			}
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		b.WriteString("No run had misses or an error rate over 1%.\n\n")
		return
	}
	b.WriteString("## Flagged runs\n\n" + strings.Join(lines, "\n") + "\n\n")
}

// writeLeaders tells, per keystore cluster, which node led in its runs. The
// client finds the leader itself (it asks the nodes every 2 s), so where
// the election fell does not change the path a write takes.
func (s *summary) writeLeaders(b *strings.Builder) {
	for _, l := range s.systems {
		var runs, first int
		leaders := map[string]int{}
		for _, r := range s.runs {
			if r.Label != l || r.LeaderFirst == nil {
				continue
			}
			runs++
			leaders[r.Leader]++
			if *r.LeaderFirst {
				first++
			}
		}
		if runs == 0 {
			continue
		}
		names := make([]string, 0, len(leaders))
		for n, c := range leaders {
			names = append(names, fmt.Sprintf("%s ×%d", n, c))
		}
		slices.Sort(names)
		fmt.Fprintf(b, "- %s: leaders over %d runs: %s (the first endpoint led in %d); the client sends calls to the leader wherever it is\n",
			l, runs, strings.Join(names, ", "), first)
	}
}

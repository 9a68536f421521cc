package clustertest

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/cluster-test/checker"
	"github.com/keystore-dev/keystore/cluster-test/harness"
	"github.com/keystore-dev/keystore/cluster-test/history"
)

var (
	faultRuns     = flag.Int("faults.runs", 1, "how many seeded fault runs TestFaults makes")
	faultSeed     = flag.Int64("faults.seed", 1, "the first run's seed; run i uses seed+i")
	faultDuration = flag.Duration("faults.duration", 15*time.Second, "how long each run injects faults under load")
	faultResults  = flag.String("faults.results", "results", "where a failing run saves its history, visualization and logs")
	faultTags     = flag.String("faults.tags", "", "extra build tags for keystored, e.g. bug_notoken (see internal/bugs)")
	faultArgs     = flag.String("faults.args", "", "extra keystored flags for every node, space-separated (e.g. --raft-commit-hold=-1ms)")
	faultExpect   = flag.Bool("faults.expect-violations", false, "checker efficacy: pass only if some run finds a violation (stops at the first)")
	faultSaveLogs = flag.Bool("faults.save-logs", false, "save every run's node logs under -faults.results, not only a failing run's")
	faultKinds    = flag.String("faults.kinds", "", "comma-separated fault kinds to draw from (default: the nemesis's mix; e.g. replace,remove-rejoin,kill)")
	faultSecure   = flag.Bool("faults.secure", false, "run the nodes with client TLS, peer mutual TLS and an authorization policy (the harness and joining nodes as admins)")
	faultGossip   = flag.Bool("faults.gossip", true, "run the nodes with gossip (--gossip-addr, --join the others' gossip addresses; rejoins find the cluster by gossip)")
)

// runStats is what one run measured.
type runStats struct {
	seed       int64
	ops        int
	checked    int // ops the checkers could judge
	elections  uint64
	faults     map[string]int
	takeovers  int
	expiries   int
	recoveries map[string][]time.Duration
	rejoins    map[string][]time.Duration // membership faults: time from --join to voter
	caughtUp   map[string][]time.Duration // membership faults: time from --join to serving
	violations int
	notes      []string
}

// TestFaults runs the seeded fault runs: three real keystored processes
// behind fault proxies, a recorded workload, two overlapping fault streams,
// then heal, convergence and the checkers.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes under faults")
	}
	if *faultKinds != "" {
		for _, k := range strings.Split(*faultKinds, ",") {
			if !slices.Contains(harness.FaultKinds, k) {
				t.Fatalf("-faults.kinds: unknown kind %q (known: %s)", k, strings.Join(harness.FaultKinds, ","))
			}
		}
	}
	var tags []string
	if *faultTags != "" {
		tags = strings.Split(*faultTags, ",")
	}
	bin, err := harness.Build(t.TempDir(), tags...)
	if err != nil {
		t.Fatal(err)
	}
	var all []runStats
	for i := 0; i < *faultRuns; i++ {
		seed := *faultSeed + int64(i)
		if *faultExpect {
			st := faultRun(t, bin, seed, true)
			all = append(all, st)
			if st.violations > 0 {
				t.Logf("build tags %q: caught at run %d (seed %d): %s", *faultTags, i+1, seed, st.notes[0])
				fmt.Printf("build tags %q: caught at run %d (seed %d): %s\n", *faultTags, i+1, seed, st.notes[0])
				printSummary(t, all)
				return
			}
			continue
		}
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			all = append(all, faultRun(t, bin, seed, false))
		})
	}
	printSummary(t, all)
	if *faultExpect {
		t.Fatalf("build tags %q: no violation found in %d runs; the suite missed the bug", *faultTags, *faultRuns)
	}
}

// faultRun makes one run. With expectBug, violations are the goal: they are
// reported, not failed on.
func faultRun(t *testing.T, bin string, seed int64, expectBug bool) runStats {
	dir := t.TempDir()
	hc := harness.Config{Binary: bin, Dir: dir, Args: strings.Fields(*faultArgs), NoGossip: !*faultGossip}
	if *faultSecure {
		secureHarness(t, &hc)
	}
	c, err := harness.Start(hc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), *faultDuration+2*time.Minute)
	defer cancel()
	if err := c.WaitServing(ctx); err != nil {
		saveLogs(t, seed, c)
		t.Fatalf("seed %d: the cluster never served: %v", seed, err)
	}
	startTerm := c.Term(ctx)
	// Half the runs use short leases and retention, so takeovers and
	// expiry happen inside fault windows.
	w := harness.Workload{Seed: seed, Lease: 2 * time.Second, Retention: 5 * time.Second}
	if seed%2 == 0 {
		w.Lease, w.Retention = 20*time.Second, time.Hour
	}
	var log history.Log
	runStart := time.Now()
	runCtx, stopRun := context.WithTimeout(ctx, *faultDuration)
	defer stopRun()
	faultsc := make(chan []harness.Fault, 1)
	nem := harness.Nemesis{Seed: seed}
	if *faultKinds != "" {
		nem.Kinds = strings.Split(*faultKinds, ",")
	}
	go func() { faultsc <- harness.RunNemesis(runCtx, c, nem) }()
	harness.RunWorkload(runCtx, c, w, &log)
	faults := <-faultsc

	// Heal, wait for every node, and compare their state machines.
	if err := c.Heal(); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	st := runStats{seed: seed, faults: map[string]int{}, recoveries: map[string][]time.Duration{}, rejoins: map[string][]time.Duration{}, caughtUp: map[string][]time.Duration{}}
	fail := func(format string, args ...any) {
		st.violations++
		st.notes = append(st.notes, fmt.Sprintf(format, args...))
	}
	healCtx, healCancel := context.WithTimeout(ctx, 60*time.Second)
	defer healCancel()
	if err := c.WaitServing(healCtx); err != nil {
		fail("after healing: %v", err)
	} else if err := c.SameState(healCtx); err != nil {
		fail("after healing: %v", err)
	} else if err := c.WaitMembers(healCtx); err != nil {
		// Replaced nodes joined under new ids: every one must be back as
		// a voter, and no removed id left behind.
		fail("after healing: %v", err)
	} else if err := c.WaitGossipAlive(healCtx); err != nil {
		// Advice, yet once every node serves, gossip must see them all
		// alive too (a node restarted on its old ports is taken back).
		fail("after healing: %v", err)
	} else if *faultGossip {
		t.Logf("seed %d: every node alive in every node's gossip %s after healing", seed, time.Since(healed).Round(time.Millisecond))
	}
	ops := log.Ops()
	st.ops = len(ops)
	// Every third client writes through BatchService; those writes must
	// succeed too, or the checkers would judge little of the batch path.
	batchedOK := 0
	for _, op := range ops {
		if op.Client%3 == 2 && op.Kind != history.Get && op.Result == history.OK {
			batchedOK++
		}
	}
	if batchedOK == 0 {
		fail("no write through BatchService succeeded")
	}
	if term := c.Term(ctx); term > startTerm {
		st.elections = term - startTerm
	}
	for _, f := range faults {
		st.faults[f.Kind]++
		if f.Recovery > 0 {
			st.recoveries[f.Kind] = append(st.recoveries[f.Kind], f.Recovery)
		}
		if f.Rejoin > 0 {
			st.rejoins[f.Kind] = append(st.rejoins[f.Kind], f.Rejoin)
		}
		if f.CaughtUp > 0 {
			st.caughtUp[f.Kind] = append(st.caughtUp[f.Kind], f.CaughtUp)
		}
		if f.Note != "" {
			t.Logf("seed %d: %s at +%s: %s", seed, f.Kind, f.Start.Sub(runStart).Round(time.Millisecond), f.Note)
		}
	}
	st.takeovers, st.expiries = countDuringFaults(ops, faults)
	violations, rep := checkHistory(ops)
	st.checked = rep.Linearizable + rep.Indeterminate + rep.StaleGets
	for _, v := range violations {
		fail("%s", v)
	}
	if st.violations > 0 && !expectBug {
		saveFailure(t, seed, c, ops, st, rep)
		saveFaults(seed, faults, runStart)
		t.Errorf("seed %d: %d violations:\n%s", seed, st.violations, strings.Join(st.notes, "\n"))
	} else if *faultSaveLogs {
		saveLogs(t, seed, c)
		saveFaults(seed, faults, runStart)
	}
	return st
}

// countDuringFaults counts takeovers (ACQUIRED with attempt > 1) and
// re-acquisitions after expiry (ACQUIRED attempt 1 on a key acquired
// before) whose calls overlapped a fault.
func countDuringFaults(ops []history.Op, faults []harness.Fault) (takeovers, expiries int) {
	seen := map[string]bool{}
	during := func(op history.Op) bool {
		for _, f := range faults {
			if op.Call <= f.End.UnixNano() && op.Return >= f.Start.UnixNano() {
				return true
			}
		}
		return false
	}
	sorted := append([]history.Op(nil), ops...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Return < sorted[j].Return })
	for _, op := range sorted {
		if op.Kind != history.Claim || op.Result != history.OK || op.Outcome != "ACQUIRED" || op.Record == nil {
			continue
		}
		if during(op) {
			if op.Record.Attempt > 1 {
				takeovers++
			} else if seen[op.Key] {
				expiries++
			}
		}
		seen[op.Key] = true
	}
	return takeovers, expiries
}

func saveFailure(t *testing.T, seed int64, c *harness.Cluster, ops []history.Op, st runStats, rep checker.Report) {
	dir := filepath.Join(*faultResults, fmt.Sprintf("seed-%d", seed))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("saving results: %v", err)
		return
	}
	_ = history.Save(filepath.Join(dir, "history.json"), ops)
	_ = os.WriteFile(filepath.Join(dir, "violations.txt"), []byte(strings.Join(st.notes, "\n")+"\n"), 0o644)
	copyLogs(c, dir)
	if err := saveVisualization(dir, ops, rep); err != nil {
		t.Logf("saving visualization: %v", err)
	}
	abs, _ := filepath.Abs(dir)
	t.Logf("seed %d: history, logs and visualization saved in %s; replay with -faults.seed=%d -faults.runs=1", seed, abs, seed)
}

// saveLogs keeps the node logs of a run that could not start, under the
// results folder.
func saveLogs(t *testing.T, seed int64, c *harness.Cluster) {
	dir := filepath.Join(*faultResults, fmt.Sprintf("seed-%d", seed))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("saving logs: %v", err)
		return
	}
	copyLogs(c, dir)
	abs, _ := filepath.Abs(dir)
	t.Logf("seed %d: node logs saved in %s", seed, abs)
}

// saveFaults writes the run's fault schedule beside its logs, times from
// the run's start and wall clock (as the node logs have it).
func saveFaults(seed int64, faults []harness.Fault, start time.Time) {
	faults = append([]harness.Fault(nil), faults...)
	sort.Slice(faults, func(i, j int) bool { return faults[i].Start.Before(faults[j].Start) })
	var b strings.Builder
	for _, f := range faults {
		fmt.Fprintf(&b, "+%-8s %s–%s  %-13s %-9s recovery=%s", f.Start.Sub(start).Round(time.Millisecond),
			f.Start.UTC().Format("15:04:05.000"), f.End.UTC().Format("15:04:05.000"), f.Kind, strings.Join(f.Nodes, ","), f.Recovery.Round(time.Millisecond))
		if f.Note != "" {
			fmt.Fprintf(&b, " voter=%s serving=%s  %s", f.Rejoin.Round(time.Millisecond), f.CaughtUp.Round(time.Millisecond), f.Note)
		}
		b.WriteString("\n")
	}
	_ = os.WriteFile(filepath.Join(*faultResults, fmt.Sprintf("seed-%d", seed), "faults.txt"), []byte(b.String()), 0o644)
}

func copyLogs(c *harness.Cluster, dir string) {
	for _, n := range c.Names {
		if b, err := os.ReadFile(c.LogPath(n)); err == nil {
			_ = os.WriteFile(filepath.Join(dir, n+".log"), b, 0o644)
		}
	}
}

func printSummary(t *testing.T, runs []runStats) {
	faults := map[string]int{}
	rec := map[string][]time.Duration{}
	rejoin := map[string][]time.Duration{}
	caught := map[string][]time.Duration{}
	var ops, checked, takeovers, expiries, violations int
	var elections uint64
	for _, r := range runs {
		elections += r.elections
		ops += r.ops
		checked += r.checked
		takeovers += r.takeovers
		expiries += r.expiries
		violations += r.violations
		for k, v := range r.faults {
			faults[k] += v
		}
		for k, v := range r.recoveries {
			rec[k] = append(rec[k], v...)
		}
		for k, v := range r.rejoins {
			rejoin[k] = append(rejoin[k], v...)
		}
		for k, v := range r.caughtUp {
			caught[k] = append(caught[k], v...)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nfault runs: %d   operations: %d (judged by the checkers: %d)   violations: %d\n", len(runs), ops, checked, violations)
	fmt.Fprintf(&b, "leader elections (term increments): %d   takeovers during faults: %d   re-acquisitions after expiry during faults: %d\n", elections, takeovers, expiries)
	kinds := make([]string, 0, len(faults))
	for k := range faults {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	// recovered: faults after which a Claim succeeded within the probe's
	// limit, timed from the kill (kill, kill-leader, replace), the restart
	// of all (kill-all), the heal (isolate, pause) or the removal request
	// (remove-rejoin); see harness.Fault. Membership faults also show how
	// many wiped nodes were voters again within the limit (rejoined) and
	// how long after their start with --join they were voters, and served.
	fmt.Fprintf(&b, "%-13s %6s %10s %10s %10s %10s %9s %10s %10s %10s %10s\n", "fault", "count", "recovered", "p50", "p99", "max",
		"rejoined", "voter p50", "voter max", "serve p50", "serve max")
	for _, k := range kinds {
		d := rec[k]
		p50, p99, pmax := percentile(d, 0.5), percentile(d, 0.99), percentile(d, 1)
		fmt.Fprintf(&b, "%-13s %6d %10d %10s %10s %10s", k, faults[k], len(d), p50, p99, pmax)
		if k == harness.FaultReplace || k == harness.FaultRemoveRejoin {
			j, s := rejoin[k], caught[k]
			fmt.Fprintf(&b, " %9d %10s %10s %10s %10s", len(j), percentile(j, 0.5), percentile(j, 1), percentile(s, 0.5), percentile(s, 1))
		}
		b.WriteString("\n")
	}
	fmt.Print(b.String())
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(p*float64(len(s))))].Round(time.Millisecond)
}

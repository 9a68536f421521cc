package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// largeRetention is the retention of every record the large-state
// benchmark writes: nothing expires during a run, so the state only grows
// and the replicas' checksums can be compared at any quiet moment.
const largeRetention = 24 * time.Hour

// largeConfig is the large-state benchmark's knobs (see largeCmd's flags).
type largeConfig struct {
	keystored       string
	dir             string
	fstype          string
	out             string
	records         []int64
	concurrency     int
	duration        time.Duration
	warmup          time.Duration
	dup             float64
	settle          time.Duration
	preloadWorkers  int
	preloadTimeout  time.Duration
	catchup         int64
	catchupWorkers  int
	catchupTimeout  time.Duration
	snapshotEntries uint64
	keepEntries     uint64
	bigCount        int64
	bigSize         int
	bigSmall        int64
	bigWorkers      int
	clientBase      int
	peerBase        int
	fsyncDuration   time.Duration
	report          string
	only            string
	membership      bool
	memberRate      float64
	memberWorkers   int
	memberTimeout   time.Duration
}

// largeCmd is `keystore-bench large`: the large-state benchmark that
// bench/large.sh (make bench-large) runs. It starts its own three-node
// cluster from -keystored under -dir and measures, on real processes and
// disks: throughput at -concurrency on a cluster holding each of -records
// live records against the same on the empty cluster; the restart-to-
// serving time of a follower holding that state; a stopped follower's
// catch-up by snapshot (time, RSS of sender and receiver, checksums);
// and the same catch-up with a state of -big-count responses of
// -big-size bytes. See README.md, "Large state".
func largeCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keystore-bench large", flag.ContinueOnError)
	var (
		cfg     largeConfig
		records = fs.String("records", "1000000 5000000", "live-record counts to measure at, space- or comma-separated, ascending (empty: the empty cluster only)")
	)
	fs.StringVar(&cfg.keystored, "keystored", "", "the keystored binary (required)")
	fs.StringVar(&cfg.dir, "dir", "", "directory for the nodes' data and logs, on the disk to measure (required)")
	fs.StringVar(&cfg.fstype, "fstype", "", "filesystem of -dir, for the report")
	fs.StringVar(&cfg.out, "out", "", "directory for large-state.md and large-state.jsonl (empty: print only)")
	fs.IntVar(&cfg.concurrency, "concurrency", 64, "workers of the throughput runs")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "measured time of a throughput run (max 5m)")
	fs.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "warm-up of a throughput run, not counted")
	fs.Float64Var(&cfg.dup, "dup", 0.10, "fraction of retries in the throughput runs")
	fs.DurationVar(&cfg.settle, "settle", 2*time.Minute, "before each throughput run, wait (at least 2 s, at most this) until the nodes are idle: the preload's compactions done")
	fs.IntVar(&cfg.preloadWorkers, "preload-workers", 256, "concurrent lifecycles of the preload")
	fs.DurationVar(&cfg.preloadTimeout, "preload-timeout", 2*time.Hour, "longest one preload may take")
	fs.Int64Var(&cfg.catchup, "catchup", 100_000, "lifecycles written at least while a follower is down (more until the leader's log has moved past it by --snapshot-entries + --keep-entries)")
	fs.IntVar(&cfg.catchupWorkers, "catchup-workers", 64, "concurrent lifecycles while a follower is down (fewer pack fewer proposals per log entry)")
	fs.DurationVar(&cfg.catchupTimeout, "catchup-timeout", 15*time.Minute, "longest the writes while a follower is down, and its catch-up, may each take")
	fs.Uint64Var(&cfg.snapshotEntries, "snapshot-entries", 10_000, "keystored --snapshot-entries")
	fs.Uint64Var(&cfg.keepEntries, "keep-entries", 5_000, "keystored --keep-entries")
	fs.Int64Var(&cfg.bigCount, "big-count", 600, "large responses of the big-state catch-up (0: skip it)")
	fs.IntVar(&cfg.bigSize, "big-size", 1_000_000, "bytes of each large response (keystored accepts up to 1 MiB)")
	fs.Int64Var(&cfg.bigSmall, "big-small", 3_000, "small lifecycles written beside the large responses")
	fs.IntVar(&cfg.bigWorkers, "big-workers", 4, "concurrent writers of the large responses")
	fs.IntVar(&cfg.clientBase, "client-port", 27001, "client port of n1 (n2, n3: the next ones)")
	fs.IntVar(&cfg.peerBase, "peer-port", 27101, "peer port of n1 (n2, n3: the next ones)")
	fs.DurationVar(&cfg.fsyncDuration, "fsync-duration", 3*time.Second, "how long to measure the disk's fdatasync rate (0: skip)")
	fs.StringVar(&cfg.report, "report", "large-state", "the report's file name in -out, without .md / .jsonl")
	fs.StringVar(&cfg.only, "only", "", "membership: after each preload, only the membership steps (no throughput, restart, catch-up or big state)")
	fs.BoolVar(&cfg.membership, "membership", true, "at each state size, a fourth node's join and a killed follower's replacement")
	fs.Float64Var(&cfg.memberRate, "member-rate", 300, "lifecycles/s written during the membership steps (0: none)")
	fs.IntVar(&cfg.memberWorkers, "member-workers", 16, "concurrent writers of those lifecycles")
	fs.DurationVar(&cfg.memberTimeout, "member-timeout", 10*time.Minute, "longest a joining node may take to be a voter, SERVING and caught up")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, f := range strings.FieldsFunc(*records, func(r rune) bool { return r == ' ' || r == ',' }) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("-records: %q is not a positive count", f)
		}
		if len(cfg.records) > 0 && n <= cfg.records[len(cfg.records)-1] {
			return fmt.Errorf("-records: want ascending counts, got %q", *records)
		}
		cfg.records = append(cfg.records, n)
	}
	switch {
	case cfg.keystored == "" || cfg.dir == "":
		return errors.New("-keystored and -dir are required")
	case cfg.concurrency < 1 || cfg.concurrency > 4096:
		return fmt.Errorf("-concurrency %d: want 1..4096", cfg.concurrency)
	case cfg.duration <= 0 || cfg.duration > maxDuration:
		return fmt.Errorf("-duration %v: want >0 and at most %v", cfg.duration, maxDuration)
	case cfg.warmup < 0 || cfg.warmup > maxDuration:
		return fmt.Errorf("-warmup %v: want 0..%v", cfg.warmup, maxDuration)
	case cfg.dup < 0 || cfg.dup >= 1:
		return fmt.Errorf("-dup %v: want [0, 1)", cfg.dup)
	case cfg.preloadWorkers < 1 || cfg.catchupWorkers < 1 || cfg.bigWorkers < 1:
		return errors.New("-preload-workers, -catchup-workers and -big-workers must be ≥ 1")
	case cfg.bigSize < 1 || cfg.bigSize > 1<<20:
		return fmt.Errorf("-big-size %d: want 1..1MiB (keystored's --max-body-bytes)", cfg.bigSize)
	case cfg.snapshotEntries == 0 || cfg.keepEntries == 0:
		return errors.New("-snapshot-entries and -keep-entries must be > 0")
	case cfg.fsyncDuration < 0 || cfg.fsyncDuration > time.Minute:
		return fmt.Errorf("-fsync-duration %v: want 0..1m", cfg.fsyncDuration)
	case cfg.only != "" && cfg.only != "membership":
		return fmt.Errorf("-only %q: want empty or membership", cfg.only)
	case cfg.only == "membership" && !cfg.membership:
		return errors.New("-only membership with -membership=false measures nothing")
	case cfg.memberRate < 0 || cfg.memberRate > 10_000 || cfg.memberWorkers < 1:
		return fmt.Errorf("-member-rate %v, -member-workers %d: want a rate of 0..10000/s and at least one worker", cfg.memberRate, cfg.memberWorkers)
	case cfg.report == "" || strings.ContainsRune(cfg.report, '/'):
		return fmt.Errorf("-report %q: want a file name", cfg.report)
	}
	if cfg.out != "" {
		if err := os.MkdirAll(cfg.out, 0o755); err != nil {
			return err
		}
	}

	rep := &largeReport{
		Time:   time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		NumCPU: runtime.NumCPU(),
		Kernel: kernelRelease(),
		Dir:    cfg.dir,
		FSType: cfg.fstype,
		Flags:  strings.Join(largeFlags(cfg), " "),
		Settings: fmt.Sprintf("Every record: a 32-byte fingerprint, a response of 200 B (the big state: %s B), retention %.0f h. Preload: %d concurrent lifecycles over one `client.Client`; while a follower is down: %d.",
			commas(int64(cfg.bigSize)), largeRetention.Hours(), cfg.preloadWorkers, cfg.catchupWorkers),
		Only:           cfg.only,
		MemberRate:     cfg.memberRate,
		MemberWorkers:  cfg.memberWorkers,
		ElectionBoundS: electionBound.Seconds(),
	}
	runErr := runLarge(ctx, cfg, rep)
	if runErr != nil {
		msg := runErr.Error()
		if ctx.Err() != nil {
			msg = "interrupted (SIGINT, SIGTERM or MAX_TIME): " + msg
		}
		rep.Failures = append(rep.Failures, msg)
	}
	md := rep.markdown()
	fmt.Println()
	fmt.Print(md)
	if cfg.out != "" {
		mdPath := filepath.Join(cfg.out, cfg.report+".md")
		jsonPath := filepath.Join(cfg.out, cfg.report+".jsonl")
		if err := os.WriteFile(mdPath, []byte(md), 0o644); err != nil {
			return err
		}
		if err := rep.writeJSONLines(jsonPath); err != nil {
			return err
		}
		fmt.Printf("\nlarge: wrote %s and %s\n", mdPath, jsonPath)
	}
	misses := int64(0)
	for _, t := range rep.Throughput {
		if t.Run != nil {
			misses += t.Run.Misses
		}
	}
	switch {
	case misses > 0:
		fmt.Fprintf(os.Stderr, "\n!!!!!!!! %d MISSES: retries of completed keys did not get the stored response back !!!!!!!!\n", misses)
		return exitCode(3)
	case len(rep.Failures) > 0:
		fmt.Fprintf(os.Stderr, "large: %d failure(s); see the report\n", len(rep.Failures))
		return exitCode(1)
	}
	return nil
}

func largeFlags(cfg largeConfig) []string {
	return []string{"--snapshot-entries", strconv.FormatUint(cfg.snapshotEntries, 10), "--keep-entries", strconv.FormatUint(cfg.keepEntries, 10)}
}

func logf(format string, args ...any) {
	fmt.Printf("large: %s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// runLarge runs every phase, filling rep. A failure of a step that leaves
// the cluster usable is recorded in rep and the run goes on; anything else
// ends it.
func runLarge(ctx context.Context, cfg largeConfig, rep *largeReport) error {
	if cfg.fsyncDuration > 0 {
		r, err := runFsync(ctx, runConfig{Backend: "fsync", Label: "fsync", Concurrency: 1, Duration: cfg.fsyncDuration,
			Warmup: time.Second, ValueSize: 200}, filepath.Join(cfg.dir, "fsync"))
		if err != nil {
			return fmt.Errorf("fsync: %w", err)
		}
		rep.FsyncsPerS = r.LifecyclesPerS
		logf("disk: %.0f fdatasyncs/s", r.LifecyclesPerS)
		_ = os.RemoveAll(filepath.Join(cfg.dir, "fsync"))
	}

	pidDir := filepath.Join(cfg.dir, "pids")
	cl, err := newKSCluster(cfg.keystored, filepath.Join(cfg.dir, "records"), pidDir, cfg.clientBase, cfg.peerBase, largeFlags(cfg))
	if err != nil {
		return err
	}
	defer cl.close()
	logf("starting three nodes in %s (clients on %s)", cl.dir, strings.Join(cl.endpoints(), ","))
	if err := cl.startAll(); err != nil {
		return err
	}
	kc, err := waitReady(ctx, cl)
	if err != nil {
		return err
	}
	defer kc.Close()

	// The empty cluster, then each state size in turn: the preload tops
	// the state up to the target (what earlier steps wrote counts).
	only := cfg.only == "membership"
	var empty *largeThroughput
	if !only {
		empty, err = measureLarge(ctx, cfg, cl, "empty", 0)
		if err != nil {
			return err
		}
		rep.Throughput = append(rep.Throughput, empty)
	}
	// written counts the records of the preloads and catch-ups; each
	// preload tops it up to the next target. The throughput runs' own
	// records come on top (the table shows what the leader stores).
	var written int64
	for _, target := range cfg.records {
		state := commas(target) + " records"
		need := target - written
		var ls loadStats
		if need > 0 {
			logf("preload: %s lifecycles to reach %s", commas(need), state)
			ls, err = runLoad(ctx, cl, kc, loadSpec{label: "preload " + state, prefix: "pre" + strconv.FormatInt(target, 10),
				count: need, workers: cfg.preloadWorkers, bodySize: 200, timeout: cfg.preloadTimeout, opTimeout: 30 * time.Second})
			if err != nil {
				return fmt.Errorf("preload to %s: %w", state, err)
			}
			logf("preload: %s stored in %.1f s (%.0f/s, %d errors)", commas(ls.stored), ls.elapsed.Seconds(), ls.rate(), ls.errors)
			written += ls.stored
			rep.Preloads = append(rep.Preloads, &largePreload{Kind: "preload", State: state, Target: target, Preloaded: ls.stored,
				PreloadS: ls.elapsed.Seconds(), PreloadPerS: ls.rate(), PreloadErrors: ls.errors})
		}
		if only {
			if err := measureMembership(ctx, cfg, cl, kc, state, rep); err != nil {
				return err
			}
			continue
		}
		t, err := measureLarge(ctx, cfg, cl, state, target)
		if err != nil {
			return err
		}
		t.Preloaded, t.PreloadS, t.PreloadPerS, t.PreloadErrors = ls.stored, ls.elapsed.Seconds(), ls.rate(), ls.errors
		if empty.Run != nil && t.Run != nil && empty.Run.LifecyclesPerS > 0 {
			t.VsEmpty = t.Run.LifecyclesPerS / empty.Run.LifecyclesPerS
		}
		rep.Throughput = append(rep.Throughput, t)

		r, err := restartFollower(ctx, cl, state)
		rep.Restarts = append(rep.Restarts, r)
		if err != nil {
			return err
		}
		c, err := catchUp(ctx, cfg, cl, kc, state, cfg.catchup)
		rep.CatchUps = append(rep.CatchUps, c)
		written += c.Written
		if err != nil {
			return err
		}
		if cfg.membership {
			if err := measureMembership(ctx, cfg, cl, kc, state, rep); err != nil {
				return err
			}
		}
	}
	_ = kc.Close()
	cl.close()
	logf("stopped the cluster")

	if cfg.bigCount > 0 && !only {
		if err := runBig(ctx, cfg, rep, pidDir); err != nil {
			return err
		}
	}
	return nil
}

// runBig is the catch-up with a state of large responses, on a cluster of
// its own (same ports, new data).
func runBig(ctx context.Context, cfg largeConfig, rep *largeReport, pidDir string) error {
	state := fmt.Sprintf("%s × %s B + %s small", commas(cfg.bigCount), commas(int64(cfg.bigSize)), commas(cfg.bigSmall))
	cl, err := newKSCluster(cfg.keystored, filepath.Join(cfg.dir, "big"), pidDir, cfg.clientBase, cfg.peerBase, largeFlags(cfg))
	if err != nil {
		return err
	}
	defer cl.close()
	logf("big state: starting three new nodes in %s", cl.dir)
	if err := cl.startAll(); err != nil {
		return err
	}
	kc, err := waitReady(ctx, cl)
	if err != nil {
		return err
	}
	defer kc.Close()
	ls, err := runLoad(ctx, cl, kc, loadSpec{label: "large responses", prefix: "big", count: cfg.bigCount,
		workers: cfg.bigWorkers, bodySize: cfg.bigSize, timeout: cfg.preloadTimeout, opTimeout: time.Minute})
	if err != nil {
		return fmt.Errorf("big state: %w", err)
	}
	logf("big state: %d responses of %s B in %.1f s (%.1f MB/s)", ls.stored, commas(int64(cfg.bigSize)), ls.elapsed.Seconds(),
		float64(ls.stored)*float64(cfg.bigSize)/1e6/ls.elapsed.Seconds())
	if cfg.bigSmall > 0 {
		ls, err = runLoad(ctx, cl, kc, loadSpec{label: "small beside large", prefix: "bigsmall", count: cfg.bigSmall,
			workers: cfg.catchupWorkers, bodySize: 200, timeout: cfg.preloadTimeout, opTimeout: 30 * time.Second})
		if err != nil {
			return fmt.Errorf("big state: %w", err)
		}
	}
	if _, err := settle(ctx, cl, cfg.settle); err != nil {
		return err
	}
	r, err := restartFollower(ctx, cl, state)
	rep.Restarts = append(rep.Restarts, r)
	if err != nil {
		return err
	}
	// Small lifecycles while the follower is down: only as many as move
	// the leader's log past it, so that the snapshot is mostly the state.
	c, err := catchUp(ctx, cfg, cl, kc, state, 1000)
	rep.CatchUps = append(rep.CatchUps, c)
	return err
}

// waitReady waits for a leader and one lifecycle that completes and
// replays, and returns a client for the loads.
func waitReady(ctx context.Context, cl *ksCluster) (*client.Client, error) {
	if _, err := cl.leader(ctx, time.Minute); err != nil {
		return nil, err
	}
	bf := backendFlags{backend: "keystore", endpoints: strings.Join(cl.endpoints(), ",")}
	deadline := time.Now().Add(time.Minute)
	for {
		err := pingOnce(ctx, bf, security{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("cluster not ready: %w", err)
		}
		if err := cl.checkAlive(); err != nil {
			return nil, err
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return client.New(ctx, client.Config{Endpoints: cl.endpoints()})
}

func mustLeaderStatus(ctx context.Context, cl *ksCluster) (*leaderStatus, error) {
	l, err := cl.leader(ctx, time.Minute)
	if err != nil {
		return nil, err
	}
	st, err := l.status(ctx, 5*time.Second, false)
	if err != nil {
		return nil, fmt.Errorf("status of the leader %s: %w", l.name, err)
	}
	return &leaderStatus{node: l, StatusResponse: st}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// measureLarge runs the workload of keystore-bench (claim + complete,
// retries) at cfg.concurrency for cfg.duration against cl.
func measureLarge(ctx context.Context, cfg largeConfig, cl *ksCluster, state string, target int64) (*largeThroughput, error) {
	settled, err := settle(ctx, cl, cfg.settle)
	if err != nil {
		return nil, err
	}
	ls, err := mustLeaderStatus(ctx, cl)
	if err != nil {
		return nil, err
	}
	t := &largeThroughput{Kind: "throughput", State: state, Target: target, Records: ls.GetStoredRecords(),
		DiskBytes: dirBytes(ls.node.dataDir, ""), TableBytes: dirBytes(ls.node.dataDir, ".sst")}
	ks, err := openKeystore(ctx, cl.endpoints(), 1, security{})
	if err != nil {
		return nil, err
	}
	rc := runConfig{Backend: "keystore", Label: "keystore-3 " + state, Concurrency: cfg.concurrency, Duration: cfg.duration,
		Warmup: cfg.warmup, Dup: cfg.dup, ValueSize: 200, OpTimeout: 10 * time.Second}
	t.SettleS = settled.Seconds()
	logf("throughput: %d clients for %v on %s (%s stored; idle after %.0f s)", cfg.concurrency, cfg.duration, state, commas(int64(t.Records)), t.SettleS)
	// The machine's busy time over the window, less the nodes' and this
	// process's: what other processes took (the machine may be shared).
	begin := time.Now()
	busy := make(chan float64, 1)
	go func() {
		var b0, b1 float64
		if sleepUntil(ctx, begin.Add(rc.Warmup)) == nil {
			b0 = machineBusy()
			if sleepUntil(ctx, begin.Add(rc.Warmup+rc.Duration)) == nil {
				b1 = machineBusy()
			}
		}
		busy <- b1 - b0
	}()
	res, err := runLifecycles(ctx, rc, longStore{ks}, &cpuMeter{pids: cl.pids()})
	if err == nil {
		leader, first := ks.leaderIsFirst(ctx)
		res.Leader, res.LeaderFirst = leader, &first
	}
	_ = ks.Close()
	machine := <-busy
	if err != nil {
		return nil, err
	}
	fmt.Println(res.summary())
	t.Run = res
	if machine > 0 && res.ServerCPUS >= 0 {
		t.OtherCores = max(0, machine-res.ServerCPUS-res.ClientCPUS) / res.DurationS
	}
	return t, cl.checkAlive()
}

// settle waits at least 2 s, then until the nodes together use less than
// 0.15 cores over a second (at most limit): what a preload leaves behind
// (Pebble compactions, the log's compaction) is done before measuring.
func settle(ctx context.Context, cl *ksCluster, limit time.Duration) (time.Duration, error) {
	begin := time.Now()
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return 0, err
	}
	m := &cpuMeter{pids: cl.pids()}
	prev, _, err := m.sample()
	if err != nil {
		return 0, err
	}
	for time.Since(begin) < limit {
		if err := sleepCtx(ctx, time.Second); err != nil {
			return 0, err
		}
		cur, _, err := m.sample()
		if err != nil {
			return 0, err
		}
		if cur-prev < 0.15 {
			break
		}
		prev = cur
	}
	return time.Since(begin), cl.checkAlive()
}

// machineBusy returns the machine's non-idle CPU time in seconds, from the
// first line of /proc/stat (user nice system idle iowait irq softirq
// steal ...; idle and iowait left out); 0 if unreadable.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0
		}
		ticks += n
	}
	return float64(ticks) / clockTicks
}

// longStore is the keystore backend of keystore-bench with the benchmark's
// long retention, so that the measured runs' records stay too.
type longStore struct{ *keystoreStore }

func (s longStore) Claim(ctx context.Context, key string, fp []byte) (claim, error) {
	res, err := s.client().Claim(ctx, client.ClaimRequest{
		Namespace:   keystoreNamespace,
		Key:         key,
		Fingerprint: fp,
		Lease:       claimLease,
		Retention:   largeRetention,
	})
	if err != nil {
		return claim{}, err
	}
	switch res.Outcome {
	case client.Acquired:
		return claim{Acquired: true, Token: res.Token}, nil
	case client.Completed:
		if res.Record == nil || res.Record.Response == nil {
			return claim{}, errors.New("completed without a stored response")
		}
		return claim{Completed: true, Response: res.Record.Response.Body}, nil
	}
	return claim{}, nil
}

// restartFollower stops a follower (SIGTERM), starts it again and times
// it until its health says SERVING.
func restartFollower(ctx context.Context, cl *ksCluster, state string) (*largeRestart, error) {
	leader, err := cl.leader(ctx, time.Minute)
	if err != nil {
		return &largeRestart{Kind: "restart", State: state, Err: err.Error()}, err
	}
	f := cl.follower(leader)
	r := &largeRestart{Kind: "restart", State: state, Node: f.name, DiskBytes: dirBytes(f.dataDir, ""), TableBytes: dirBytes(f.dataDir, ".sst")}
	if st, err := f.status(ctx, 5*time.Second, false); err == nil {
		r.Records = st.GetStoredRecords()
	}
	logf("restart: stopping follower %s (%s stored, %s on disk)", f.name, commas(int64(r.Records)), mb(r.DiskBytes))
	stopD, err := cl.stop(f, 30*time.Second)
	r.StopS = stopD.Seconds()
	if err != nil {
		r.Err = err.Error()
		return r, err
	}
	t0 := time.Now()
	if err := cl.start(f); err != nil {
		r.Err = err.Error()
		return r, err
	}
	listen, serving, err := f.waitServing(ctx, t0, 10*time.Minute)
	r.ListenS, r.ServingS = listen.Seconds(), serving.Seconds()
	if err != nil {
		r.Err = err.Error()
		return r, err
	}
	logf("restart: %s exited %.2f s after SIGTERM; listening %.2f s and SERVING %.2f s after start", f.name, r.StopS, r.ListenS, r.ServingS)
	return r, cl.checkAlive()
}

// catchUp stops a follower, writes at least minLifecycles lifecycles and
// then more until the leader's commit index has moved past the follower's
// by more than --snapshot-entries + --keep-entries (plus a margin), so that
// the leader's log no longer holds what the follower lacks; then it starts
// the follower and times its catch-up while sampling every node's RSS, and
// compares the replicas' checksums.
func catchUp(ctx context.Context, cfg largeConfig, cl *ksCluster, kc *client.Client, state string, minLifecycles int64) (*largeCatchUp, error) {
	c := &largeCatchUp{Kind: "catchup", State: state, RSSBefore: map[string]int64{}}
	fail := func(err error) (*largeCatchUp, error) {
		c.Err = err.Error()
		return c, err
	}
	leader, err := cl.leader(ctx, time.Minute)
	if err != nil {
		return fail(err)
	}
	f := cl.follower(leader)
	c.Leader, c.Follower = leader.name, f.name
	if st, err := f.status(ctx, 5*time.Second, false); err == nil {
		c.StoppedApplied = st.GetAppliedIndex()
	}
	if rss, err := readRSS(f.pid()); err == nil {
		c.RSSBefore[f.name] = rss
	}
	if _, err := cl.stop(f, 30*time.Second); err != nil {
		return fail(err)
	}
	lst, err := leader.status(ctx, 5*time.Second, false)
	if err != nil {
		return fail(fmt.Errorf("status of the leader %s: %w", leader.name, err))
	}
	base := max(lst.GetCommitIndex(), c.StoppedApplied)
	target := base + cfg.snapshotEntries + cfg.keepEntries + cfg.snapshotEntries/10 + 100
	logf("catch-up: stopped follower %s at applied %d; writing ≥ %s lifecycles, until the leader's commit passes %d",
		f.name, c.StoppedApplied, commas(minLifecycles), target)

	var commit atomic.Uint64
	commit.Store(lst.GetCommitIndex())
	pollCtx, stopPoll := context.WithCancel(ctx)
	var pollWG sync.WaitGroup
	pollWG.Add(1)
	go func() {
		defer pollWG.Done()
		for pollCtx.Err() == nil {
			if st, err := leader.status(pollCtx, 2*time.Second, false); err == nil {
				commit.Store(st.GetCommitIndex())
			}
			_ = sleepCtx(pollCtx, 250*time.Millisecond)
		}
	}()
	ls, err := runLoad(ctx, cl, kc, loadSpec{label: "while " + f.name + " is down", prefix: fmt.Sprintf("cu%d", time.Now().UnixNano()),
		count: minLifecycles, workers: cfg.catchupWorkers, bodySize: 200, timeout: cfg.catchupTimeout, opTimeout: 30 * time.Second,
		until: func() bool { return commit.Load() >= target }})
	stopPoll()
	pollWG.Wait()
	c.Written, c.WriteS, c.WriteErrors = ls.stored, ls.elapsed.Seconds(), ls.errors
	if err != nil && !errors.Is(err, errLoadTimeout) {
		return fail(err)
	}
	lst, err = leader.status(ctx, 5*time.Second, false)
	if err != nil {
		return fail(fmt.Errorf("status of the leader %s: %w", leader.name, err))
	}
	c.Entries = lst.GetCommitIndex() - base
	c.SnapshotExpected = lst.GetCommitIndex() >= target
	c.CommitAtRestart = lst.GetCommitIndex()
	c.Records = lst.GetStoredRecords()
	c.DiskBytes, c.TableBytes = dirBytes(leader.dataDir, ""), dirBytes(leader.dataDir, ".sst")
	logf("catch-up: %s lifecycles in %.1f s while %s was down: %s log entries (%s stored, leader %s on disk)",
		commas(ls.stored), ls.elapsed.Seconds(), f.name, commas(int64(c.Entries)), commas(int64(c.Records)), mb(c.DiskBytes))

	offsets := map[string]int64{}
	for _, n := range cl.nodes {
		offsets[n.name] = n.logSize()
	}
	for name, rss := range cl.rssNow() {
		c.RSSBefore[name] = rss
	}
	sampler := startRSSSampler(cl, 100*time.Millisecond)
	t0 := time.Now()
	err = cl.start(f)
	if err == nil {
		err = waitCaughtUp(ctx, cl, leader, f, t0, cfg.catchupTimeout, c)
	}
	c.RSSPeak, c.RSSSamples = sampler.finish()
	if err != nil {
		return fail(err)
	}
	logf("catch-up: %s caught up %.2f s after start (SERVING at %.2f s); peak RSS leader %s, %s %s",
		f.name, c.CatchUpS, c.ServingS, mb(c.RSSPeak[leader.name]), f.name, mb(c.RSSPeak[f.name]))
	idx, err := cl.sameState(ctx, 3*time.Minute)
	c.ChecksumAt = idx
	if err != nil {
		c.ChecksumErr = err.Error()
	} else {
		logf("catch-up: state checksums equal on all nodes at applied index %d", idx)
	}
	c.Snapshot = readSnapLogs(cl, offsets)
	c.Sender = leader.name
	if n := len(c.Snapshot.Sent); n > 0 {
		c.Sender = c.Snapshot.Sent[n-1].Node
		logf("catch-up: snapshot of %s sent by %s in %.1f s", mb(c.Snapshot.Sent[n-1].Bytes), c.Sender, c.Snapshot.Sent[n-1].DurationMs/1000)
	} else {
		logf("catch-up: no \"sent snapshot\" in the logs")
	}
	if err != nil {
		return c, err
	}
	return c, cl.checkAlive()
}

// waitCaughtUp polls until f's applied index reaches the leader's commit
// index and f reports serving, filling c's times.
func waitCaughtUp(ctx context.Context, cl *ksCluster, leader, f *ksNode, t0 time.Time, timeout time.Duration, c *largeCatchUp) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if err := cl.checkAlive(); err != nil {
			return err
		}
		fst, ferr := f.status(ctx, 500*time.Millisecond, false)
		lst, lerr := leader.status(ctx, 500*time.Millisecond, false)
		now := time.Since(t0).Seconds()
		if ferr == nil && lerr == nil {
			if c.CatchUpS == 0 && fst.GetAppliedIndex() >= lst.GetCommitIndex() {
				c.CatchUpS = now
			}
			if c.ServingS == 0 && fst.GetServing() {
				c.ServingS = now
			}
			if c.CatchUpS > 0 && c.ServingS > 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not catch up within %v (follower: %v, leader: %v)", f.name, timeout, ferr, lerr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// loadSpec is one bounded write load: count lifecycles (claim + complete
// with a random body of bodySize bytes, retention largeRetention), then
// more while until says no.
type loadSpec struct {
	label     string
	prefix    string
	count     int64
	workers   int
	bodySize  int
	timeout   time.Duration
	opTimeout time.Duration
	until     func() bool
}

type loadStats struct {
	stored, errors int64
	elapsed        time.Duration
}

func (s loadStats) rate() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.stored) / s.elapsed.Seconds()
}

// errLoadTimeout: the load did not finish in its time.
var errLoadTimeout = errors.New("load did not finish in its time")

// runLoad runs spec with spec.workers concurrent lifecycles over kc,
// printing progress every 10 s. It fails when a node crashes or when more
// than 5% of the lifecycles fail.
func runLoad(ctx context.Context, cl *ksCluster, kc *client.Client, spec loadSpec) (loadStats, error) {
	lctx, cancel := context.WithTimeout(ctx, spec.timeout)
	defer cancel()
	var (
		issued, stored, failed atomic.Int64
		wg                     sync.WaitGroup
		mu                     sync.Mutex
		firstErr, abort        string
	)
	begin := time.Now()
	for w := range spec.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var seed [32]byte
			_, _ = rand.Read(seed[:])
			rng := mrand.New(mrand.NewChaCha8(seed))
			fp := make([]byte, fingerprintLen)
			body := make([]byte, spec.bodySize)
			for seq := 0; lctx.Err() == nil; seq++ {
				if issued.Add(1) > spec.count && (spec.until == nil || spec.until()) {
					return
				}
				fillRandom(rng, fp)
				fillRandom(rng, body)
				key := fmt.Sprintf("%s/%d/%d", spec.prefix, w, seq)
				if err := storeOne(lctx, kc, key, fp, body, spec.opTimeout); err != nil {
					if lctx.Err() != nil {
						return
					}
					issued.Add(-1)
					n := failed.Add(1)
					mu.Lock()
					if firstErr == "" {
						firstErr = err.Error()
					}
					tooMany := n > 100 && n*20 > stored.Load()
					if tooMany && abort == "" {
						abort = fmt.Sprintf("%s: %d of %d lifecycles failed (first: %s)", spec.label, n, n+stored.Load(), firstErr)
					}
					mu.Unlock()
					if tooMany {
						cancel()
						return
					}
					continue
				}
				stored.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	alive := time.NewTicker(time.Second)
	defer alive.Stop()
	var crash error
wait:
	for {
		select {
		case <-done:
			break wait
		case <-alive.C:
			if err := cl.checkAlive(); err != nil && crash == nil {
				crash = err
				cancel()
			}
		case <-progress.C:
			el := time.Since(begin).Seconds()
			logf("%s: %s of %s stored (%.0f/s), %d errors", spec.label, commas(stored.Load()), commas(spec.count), float64(stored.Load())/el, failed.Load())
		}
	}
	s := loadStats{stored: stored.Load(), errors: failed.Load(), elapsed: time.Since(begin)}
	mu.Lock()
	defer mu.Unlock()
	switch {
	case crash != nil:
		return s, crash
	case abort != "":
		return s, errors.New(abort)
	case ctx.Err() != nil:
		return s, ctx.Err()
	case lctx.Err() != nil:
		return s, fmt.Errorf("%s: %w (%v; %s stored)", spec.label, errLoadTimeout, spec.timeout, commas(s.stored))
	}
	return s, nil
}

// storeOne claims a fresh key and completes it with body.
func storeOne(ctx context.Context, kc *client.Client, key string, fp, body []byte, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := kc.Claim(ctx, client.ClaimRequest{Namespace: keystoreNamespace, Key: key, Fingerprint: fp,
		Lease: claimLease, Retention: largeRetention})
	if err != nil {
		return fmt.Errorf("claim %s: %w", key, err)
	}
	if res.Outcome != client.Acquired {
		return fmt.Errorf("claim of fresh key %s: %v", key, res.Outcome)
	}
	_, err = kc.Complete(ctx, client.CompleteRequest{Namespace: keystoreNamespace, Key: key, Token: res.Token,
		Response: client.Response{Code: responseCode, Body: body}})
	if err != nil {
		return fmt.Errorf("complete %s: %w", key, err)
	}
	return nil
}

// leaderStatus is the leader's answer to Status, with the node.
type leaderStatus struct {
	node *ksNode
	*keystorev1.StatusResponse
}

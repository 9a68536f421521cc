package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxDuration bounds one measured run so that a typo cannot start an
// hour-long load on a shared machine.
const maxDuration = 5 * time.Minute

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := dispatch(ctx, os.Args[1:])
	stop()
	if err != nil {
		var code exitCode
		if errors.As(err, &code) {
			os.Exit(int(code))
		}
		fmt.Fprintln(os.Stderr, "keystore-bench:", err)
		os.Exit(1)
	}
}

// exitCode ends the program with a status after the run already printed why.
type exitCode int

func (e exitCode) Error() string { return "exit status " + strconv.Itoa(int(e)) }

func dispatch(ctx context.Context, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "report":
			return reportCmd(args[1:])
		case "ping":
			return pingCmd(ctx, args[1:])
		case "large":
			return largeCmd(ctx, args[1:])
		case "run":
			args = args[1:]
		}
	}
	return runCmd(ctx, args)
}

// backendFlags are the flags that say which store to talk to.
type backendFlags struct {
	backend   string
	endpoints string
	clients   int
	fsyncDir  string
	sec       securityFlags
}

func (b *backendFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&b.backend, "backend", "keystore", "keystore, etcd, redis, postgres or fsync")
	fs.StringVar(&b.endpoints, "endpoints", "", "comma-separated addresses (postgres: host:port or a postgres:// URL)")
	fs.IntVar(&b.clients, "clients", 1, "keystore only: client.Client instances shared round-robin by the workers")
	fs.StringVar(&b.fsyncDir, "fsync-dir", "", "fsync only: directory for the files written and fdatasynced")
	b.sec.register(fs)
}

func (b *backendFlags) endpointList() []string {
	var out []string
	for _, e := range strings.Split(b.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func runCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keystore-bench", flag.ContinueOnError)
	var (
		bf         backendFlags
		cfg        runConfig
		serverPids = fs.String("server-pids", "", "comma-separated pids of the server processes whose CPU time is measured")
		serverComm = fs.String("server-comm", "", "regexp matched against the whole comm of every process; the matches' CPU time is measured (e.g. etcd, redis-server, postgres)")
		out        = fs.String("out", "", "append one JSON line of results to this file")
		cpuProfile = fs.String("cpuprofile", "", "write this process's CPU profile (warm-up included) to this file")
	)
	bf.register(fs)
	fs.IntVar(&cfg.Concurrency, "concurrency", 16, "workers, each running one lifecycle at a time")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measured time (max 5m)")
	fs.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "time run before measuring, not counted")
	fs.Float64Var(&cfg.Dup, "dup", 0.10, "fraction of operations that retry a completed key instead of a fresh lifecycle")
	fs.IntVar(&cfg.ValueSize, "value-size", 200, "bytes of the stored response (fsync: bytes per write)")
	fs.DurationVar(&cfg.OpTimeout, "op-timeout", 10*time.Second, "deadline of one operation; a timeout counts as an error")
	fs.StringVar(&cfg.Label, "label", "", "name of the system in the report, e.g. keystore-3 (default: the backend)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg.Backend = bf.backend
	if cfg.Label == "" {
		cfg.Label = cfg.Backend
	}
	switch {
	case cfg.Concurrency < 1 || cfg.Concurrency > 4096:
		return fmt.Errorf("-concurrency %d: want 1..4096", cfg.Concurrency)
	case cfg.Duration <= 0 || cfg.Duration > maxDuration:
		return fmt.Errorf("-duration %v: want >0 and at most %v", cfg.Duration, maxDuration)
	case cfg.Warmup < 0 || cfg.Warmup > maxDuration:
		return fmt.Errorf("-warmup %v: want 0..%v", cfg.Warmup, maxDuration)
	case cfg.Dup < 0 || cfg.Dup >= 1:
		return fmt.Errorf("-dup %v: want [0, 1)", cfg.Dup)
	case cfg.ValueSize < 1 || cfg.ValueSize > 1<<20:
		return fmt.Errorf("-value-size %d: want 1..1MiB", cfg.ValueSize)
	case cfg.OpTimeout <= 0:
		return fmt.Errorf("-op-timeout %v: want > 0", cfg.OpTimeout)
	}
	meter, err := newCPUMeter(*serverPids, *serverComm)
	if err != nil {
		return err
	}
	sec, err := bf.sec.load(cfg.Backend)
	if err != nil {
		return err
	}
	cfg.TLS, cfg.Auth = sec.tlsMode(), sec.authMode()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	var res *result
	if cfg.Backend == "fsync" {
		if bf.fsyncDir == "" {
			return errors.New("-fsync-dir is required for -backend fsync")
		}
		res, err = runFsync(ctx, cfg, bf.fsyncDir)
	} else {
		var st store
		st, err = openStore(ctx, bf, sec, cfg.Concurrency)
		if err != nil {
			return err
		}
		res, err = runLifecycles(ctx, cfg, st, meter)
		if ks, ok := st.(*keystoreStore); ok && err == nil && len(bf.endpointList()) > 1 {
			leader, first := ks.leaderIsFirst(ctx)
			res.Leader, res.LeaderFirst = leader, &first
		}
		if cerr := st.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close: %w", cerr)
		}
	}
	if err != nil {
		return err
	}
	fmt.Println(res.summary())
	if *out != "" {
		if err := res.appendJSON(*out); err != nil {
			return err
		}
	}
	if res.Misses > 0 {
		fmt.Fprintf(os.Stderr, "\n!!!!!!!! %s: %d MISSES: retries of completed keys did not get the stored response back !!!!!!!!\n", res.Label, res.Misses)
		for _, s := range res.MissSamples {
			fmt.Fprintln(os.Stderr, "  miss:", s)
		}
		return exitCode(3)
	}
	return nil
}

// openStore connects to the backend named by bf, through sec. workers sizes
// connection pools where the backend has one.
func openStore(ctx context.Context, bf backendFlags, sec security, workers int) (store, error) {
	eps := bf.endpointList()
	if len(eps) == 0 {
		return nil, fmt.Errorf("-endpoints is required for -backend %s", bf.backend)
	}
	switch bf.backend {
	case "keystore":
		return openKeystore(ctx, eps, bf.clients, sec)
	case "etcd":
		return openEtcd(ctx, eps, sec)
	case "redis":
		return openRedis(ctx, eps, workers)
	case "postgres":
		return openPostgres(ctx, eps, workers)
	}
	return nil, fmt.Errorf("-backend %q: want keystore, etcd, redis, postgres or fsync", bf.backend)
}

// pingCmd waits until the backend completes one lifecycle and replays it,
// bounded by -timeout: the scripts use it to wait for servers to be ready.
// With TLS, it then checks that the servers refuse clients without the
// credentials (checkRefusals).
func pingCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keystore-bench ping", flag.ContinueOnError)
	var bf backendFlags
	bf.register(fs)
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sec, err := bf.sec.load(bf.backend)
	if err != nil {
		return err
	}
	wait, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var last error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			select {
			case <-wait.Done():
				return fmt.Errorf("%s at %s not ready after %v: %v", bf.backend, bf.endpoints, *timeout, last)
			case <-time.After(250 * time.Millisecond):
			}
		}
		if last = pingOnce(wait, bf, sec); last == nil {
			break
		}
	}
	refused, err := checkRefusals(ctx, bf, sec)
	if err != nil {
		return err
	}
	if refused != "" {
		fmt.Printf("ping: %s at %s answers over %s TLS%s and refuses: %s\n", bf.backend, bf.endpoints, sec.tlsMode(), withAuth(sec), refused)
	}
	return nil
}

// withAuth describes sec's per-call credential for a log line.
func withAuth(sec security) string {
	if a := sec.authMode(); a != "" {
		return " with a " + a
	}
	return ""
}

func pingOnce(ctx context.Context, bf backendFlags, sec security) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := openStore(ctx, bf, sec, 1)
	if err != nil {
		return err
	}
	defer st.Close()
	key := "ping/" + newRunID()
	fp := []byte("ping-fingerprint")
	resp := []byte("pong")
	c, err := st.Claim(ctx, key, fp)
	if err != nil {
		return err
	}
	if !c.Acquired {
		return fmt.Errorf("fresh key %s not acquired", key)
	}
	if err := st.Complete(ctx, key, fp, c, resp); err != nil {
		return err
	}
	c, err = st.Claim(ctx, key, fp)
	if err != nil {
		return err
	}
	if !c.Completed || string(c.Response) != string(resp) {
		return fmt.Errorf("replay of %s: got completed=%v response %q; want the stored one", key, c.Completed, c.Response)
	}
	return nil
}

// compileComm anchors pattern so that "postgres" does not match
// "postgres-exporter".
func compileComm(pattern string) (*regexp.Regexp, error) {
	if pattern == "" {
		return nil, nil
	}
	return regexp.Compile("^(?:" + pattern + ")$")
}

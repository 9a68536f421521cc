// Command keystored runs one keystore node. With no flags it starts a
// working single-node store on 127.0.0.1:7001 with data in ./keystore-data.
// "keystored restore FILE" makes a data dir from a backup instead
// (restore.go, docs/backup.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/keystore-dev/keystore/api"
	"github.com/keystore-dev/keystore/expiry"
	"github.com/keystore-dev/keystore/raftnode"
	"github.com/keystore-dev/keystore/server"
	"github.com/keystore-dev/keystore/storage"
	"github.com/keystore-dev/keystore/version"
	"golang.org/x/sync/errgroup"
)

// gcPercent is keystored's GOGC unless the environment sets one: the heap
// is small (records live in Pebble, not in Go memory) and every request
// allocates, so collecting four times less often buys throughput for a few
// tens of MB (docs/performance-notes.md, GOGC=400).
const gcPercent = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	err := run(os.Args[1:])
	if errors.Is(err, raftnode.ErrRemoved) {
		// Removed from the cluster: its job is done, not failed (a
		// supervisor that restarts on failure leaves it stopped).
		fmt.Fprintln(os.Stderr, "keystored: this node was removed from the cluster; its data dir must not be reused")
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keystored:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if isRestore(args) {
		return runRestore(args[1:], os.Stdout, os.Stderr) // restore.go
	}
	fs := flag.NewFlagSet("keystored", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: keystored [flags]\n"+
			"       keystored restore [--data-dir DIR] [--name NAME] FILE   make a new cluster's first node from a backup (keystored restore -h; docs/backup.md)\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var (
		name           = fs.String("name", "n1", "this member's name in --initial-cluster")
		dataDir        = fs.String("data-dir", "keystore-data", "directory for the node's data")
		clientAddr     = fs.String("client-addr", "127.0.0.1:7001", "address of the gRPC KeyStoreService")
		peerAddr       = fs.String("peer-addr", "127.0.0.1:7101", "address peers connect to")
		initialCluster = fs.String("initial-cluster", "", "every member as name=peer-host:port, comma-separated (default: this node alone)")
		advPeer        = fs.String("advertise-peer-addr", "", "the peer address other nodes reach this one at, when --peer-addr listens on every interface or behind NAT (default: --peer-addr)")
		advClient      = fs.String("advertise-client-addr", "", "the client address clients reach this node at (default: --client-addr unless it listens on every interface)")
		peerRoutes     = fs.String("peer-route", "", "name=host:port,...: dial these members of the initial cluster at these addresses instead of the ones in the log (a proxy or NAT in between)")
		join           = fs.String("join", "", "where to find the cluster, host:port,...: with --gossip-addr, gossip addresses of any nodes (a node with an empty data dir that --initial-cluster does not name joins the cluster gossip shows); without, client addresses of members (with an empty data dir, join as a new member instead of bootstrapping)")
		gossipAddr     = fs.String("gossip-addr", "", "where this node gossips (TCP and UDP), host:port; off when empty")
		advGossip      = fs.String("advertise-gossip-addr", "", "the gossip address other nodes reach this one at (default: --gossip-addr)")
		gossipKeyFile  = fs.String("gossip-key-file", "", "file of base64 gossip keys, one per line (16, 24 or 32 bytes; the first encrypts, all are accepted); reread on SIGHUP. Generate one with: head -c 32 /dev/urandom | base64")
		bootstrapExp   = fs.Int("bootstrap-expect", 0, "with an empty data dir, wait until this many nodes found each other by gossip and bootstrap them as one cluster (or join the cluster gossip shows); needs --gossip-addr and --join, not --initial-cluster")
		clusterState   = fs.String("initial-cluster-state", server.ClusterStateNew, "new: with an empty data dir, bootstrap --initial-cluster (after making sure no member of it has seen this node run); existing: never bootstrap (an empty data dir needs --join)")
		clusterToken   = fs.String("cluster-token", "keystore", "tells this cluster from others with the same member names; the same on every member")
		logLevel       = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat      = fs.String("log-format", "text", "text or json")
		metricsAddr    = fs.String("metrics-addr", "", "the admin listener: Prometheus metrics (/metrics), a liveness check (/healthz) and Go's profiles (/debug/pprof/) on this address (off when empty; keep it on loopback or a management network)")
		metricsNS      = fs.Int("metrics-max-namespaces", api.DefaultMetricsNamespaces, "namespaces the metrics label by name; later ones are counted under namespace=\"(other)\"")
		metricsUsage   = fs.Bool("metrics-namespace-usage", true, "with --metrics-addr, export each namespace's records, bytes and expiries (costs a scan of every record at start and after a snapshot install, about half a second per million records)")

		defaultLease     = fs.Duration("default-lease", 30*time.Second, "lease when a Claim names none")
		maxLease         = fs.Duration("max-lease", time.Hour, "longest lease accepted")
		defaultRetention = fs.Duration("default-retention", 24*time.Hour, "retention when a Claim names none")
		maxRetention     = fs.Duration("max-retention", 30*24*time.Hour, "longest retention accepted")
		maxBody          = fs.Int("max-body-bytes", 1<<20, "largest response body accepted")
		maxMetadata      = fs.Int("max-metadata-bytes", 64<<10, "largest response metadata accepted, keys and values together")
		maxWait          = fs.Duration("max-wait", time.Hour, "longest wait a Claim may ask for")
		shutdownGrace    = fs.Duration("shutdown-grace", 5*time.Second, "how long in-flight calls get to finish at SIGTERM before the node stops")
		requestTimeout   = fs.Duration("request-timeout", 5*time.Second, "how long a write waits for a quorum before UNAVAILABLE")
		maxWaiting       = fs.Int("max-waiting-claims", 1024, "Claims with a wait waiting on this node at once; beyond: RESOURCE_EXHAUSTED (negative: no limit)")
		maxWaitingNS     = fs.Int("max-waiting-claims-per-namespace", 256, "Claims with a wait waiting in one namespace on this node at once (negative: no limit)")
		nsRate           = fs.Float64("namespace-rate", 0, "operations per second each namespace may make on this node, a token bucket; beyond: RESOURCE_EXHAUSTED with RetryInfo (0: no limit)")
		nsBurst          = fs.Int("namespace-burst", 0, "the --namespace-rate bucket's size (default: one second's worth)")
		nsMaxRecords     = fs.Int64("namespace-max-records", 0, "records each namespace may hold (0: no quota); a Claim of a new key past it gets RESOURCE_EXHAUSTED")
		nsMaxBytes       = fs.Int64("namespace-max-bytes", 0, "bytes (keys and records) each namespace may hold (0: no quota); a Complete past it gets RESOURCE_EXHAUSTED")

		tick            = fs.Duration("raft-tick", 100*time.Millisecond, "Raft tick interval")
		electionTicks   = fs.Int("raft-election-ticks", 10, "election timeout in ticks")
		snapshotEntries = fs.Uint64("snapshot-entries", 10_000, "entries applied between log compactions")
		keepEntries     = fs.Uint64("keep-entries", 5_000, "applied entries kept in the log for lagging followers")
		sweepInterval   = fs.Duration("sweep-interval", time.Second, "longest time between two expiry sweeps (the leader also sweeps as soon as a record is due)")
		sweepBatch      = fs.Uint("sweep-batch", 1000, "most records one expiry log entry deletes (max 10000)")
		maxUncommitted  = fs.Uint64("raft-max-uncommitted-bytes", 64<<20, "command bytes a leader holds in entries no quorum acknowledged; beyond it writes fail fast with UNAVAILABLE/OVERLOADED")

		// Tuning: defaults tuned for three nodes on two cores; each can be
		// turned off (docs/performance-notes.md, raftnode/DESIGN.md).
		commitHold    = fs.Duration("raft-commit-hold", 2*time.Millisecond, "how long a commit-only append waits for the next append to carry it (negative: off)")
		senderYield   = fs.Bool("raft-sender-yield", true, "yield to the peer senders after queueing a Ready's messages")
		callerReadies = fs.Int("raft-caller-readies", 2, "Readies a proposer handles itself before the run loop takes over (negative: no bound)")
		packRounds    = fs.Int("raft-pack-rounds", 2, "packer rounds a proposer drains itself before a goroutine takes over (negative: no bound)")
		maxPack       = fs.Int("raft-max-pack-proposals", 1024, "most proposals packed into one log entry (1: no packing)")
		gatherYields  = fs.Int("stream-gather-yields", 4, "yields of a stream sender to let results woken together share a message (negative: off)")
	)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.String("config", "", "a YAML file of flag values (data-dir: /var/lib/keystore); the command line, then KEYSTORE_* environment variables, win over it")
	var secFlags securityFlags
	secFlags.register(fs)
	registerTestFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := applyConfig(fs, os.Getenv, true); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println(version.Get())
		return nil
	}
	restrictFileModes()
	logger, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	if *initialCluster == "" && *bootstrapExp == 0 && (*join == "" || *gossipAddr == "") {
		*initialCluster = *name + "=" + *peerAddr
	}
	var gossipKeys [][]byte
	if *gossipKeyFile != "" {
		if gossipKeys, err = server.ReadGossipKeys(*gossipKeyFile); err != nil {
			return err
		}
	}
	sec, err := secFlags.load(logger)
	if err != nil {
		return err
	}
	cluster, err := server.ParseCluster(*initialCluster)
	if err != nil {
		return err
	}
	var routes map[string]string
	if *peerRoutes != "" {
		if routes, err = server.ParseCluster(*peerRoutes); err != nil {
			return fmt.Errorf("--peer-route: %w", err)
		}
	}
	cfg := server.Config{
		Name:                *name,
		DataDir:             *dataDir,
		ClientAddr:          *clientAddr,
		PeerAddr:            *peerAddr,
		InitialCluster:      cluster,
		InitialClusterState: *clusterState,
		AdvertisePeerAddr:   *advPeer,
		PeerRoutes:          routes,
		AdvertiseClientAddr: *advClient,
		Join:                splitList(*join),
		GossipAddr:          *gossipAddr,
		AdvertiseGossipAddr: *advGossip,
		GossipKeys:          gossipKeys,
		BootstrapExpect:     *bootstrapExp,
		ClusterToken:        *clusterToken,
		Metrics:             server.MetricsConfig{MaxNamespaces: *metricsNS, NamespaceUsage: *metricsAddr != "" && *metricsUsage},
		API: api.Config{
			DefaultLease:     *defaultLease,
			MaxLease:         *maxLease,
			DefaultRetention: *defaultRetention,
			MaxRetention:     *maxRetention,
			MaxBodyBytes:     *maxBody,
			MaxMetadataBytes: *maxMetadata,
			MaxWait:          *maxWait,
			RequestTimeout:   *requestTimeout,

			MaxWaitingClaims:             *maxWaiting,
			MaxWaitingClaimsPerNamespace: *maxWaitingNS,
			NamespaceRate:                *nsRate,
			NamespaceBurst:               *nsBurst,
			MaxNamespaceRecords:          *nsMaxRecords,
			MaxNamespaceBytes:            *nsMaxBytes,
		},
		Raft: raftnode.Config{
			TickInterval:    *tick,
			ElectionTicks:   *electionTicks,
			SnapshotEntries: *snapshotEntries,
			KeepEntries:     *keepEntries,
			Now:             testClock(),

			MaxUncommittedBytes: *maxUncommitted,
			CommitHold:          *commitHold,
			NoSenderYield:       !*senderYield,
			CallerReadies:       *callerReadies,
			PackRounds:          *packRounds,
			MaxPackProposals:    *maxPack,
		},
		Batch: api.BatchConfig{GatherYields: *gatherYields},
		Expiry: expiry.Config{
			Interval:  *sweepInterval,
			BatchSize: uint32(min(*sweepBatch, storage.MaxExpireLimit)),
		},
		Logger: logger,
		// A disk error the state store cannot survive ends the process
		// with the error logged; a restart recovers from what is on disk.
		StorageFatal: func(msg string) {
			logger.Error("stopping: the state store failed; restart the node once its disk is sound (if it fails again, replace the node)", "err", msg)
			os.Exit(1)
		},
	}
	sec.cfg(&cfg)
	srv, err := server.New(cfg)
	if errors.Is(err, storage.ErrCorrupt) || errors.Is(err, storage.ErrNewerFormat) {
		// The error says to wipe the data directory: name it.
		dir, _ := filepath.Abs(*dataDir)
		return fmt.Errorf("%w (the data directory is %s)", err, dir)
	}
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := srv.Start(); err != nil {
		return err
	}
	if *metricsAddr != "" {
		admin, err := serveAdmin(*metricsAddr, append(srv.Collectors(), sec.collectors()...), logger)
		if err != nil {
			srv.Stop(time.Second)
			return err
		}
		defer func() { _ = admin.Close() }()
	}
	// The node runs under g until it has stopped, watched by two
	// goroutines, both ended by then:
	//   - one waits for the node: srv.Wait returns once it has stopped,
	//     with the error of a listener that failed (the node then stopped
	//     itself), or nil after the Stop below, the only one;
	//   - one stops the node at SIGINT or SIGTERM, or once the first failed
	//     (the Stop then only waits for the node's own to finish).
	// So a failing listener makes run return its error, and a signal makes
	// it return nil once the node has stopped gracefully.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(srv.Wait)
	g.Go(func() error { reloadOnHangup(gctx, srv, *gossipKeyFile, sec, logger); return nil })
	g.Go(func() error { sec.watch(gctx, secFlags.reloadEvery); return nil })
	g.Go(func() error {
		<-gctx.Done()
		if ctx.Err() != nil {
			logger.Info("shutting down")
		}
		srv.Stop(*shutdownGrace)
		return nil
	})
	return g.Wait()
}

// reloadOnHangup rereads, at each SIGHUP until ctx ends, the TLS files and
// the authorization policy, and the gossip key file if there is one (a
// key rotation: see the README).
func reloadOnHangup(ctx context.Context, srv *server.Server, path string, sec *security, logger *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		sec.reload(logger)
		if path == "" {
			continue
		}
		keys, err := server.ReadGossipKeys(path)
		if err == nil {
			err = srv.SetGossipKeys(keys)
		}
		if err != nil {
			logger.Error("gossip keys not reloaded", "err", err)
			continue
		}
		logger.Info("gossip keys reloaded", "keys", len(keys))
	}
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", format)
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/api"
	"github.com/keystore-dev/keystore/auth"
	"github.com/keystore-dev/keystore/expiry"
	"github.com/keystore-dev/keystore/membership"
	peerv1 "github.com/keystore-dev/keystore/proto/keystore/peer/v1"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"github.com/keystore-dev/keystore/storage"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

// Config configures one keystore node.
type Config struct {
	// Name is this member's name in InitialCluster.
	Name string
	// DataDir holds the node's database (DataDir/db).
	DataDir string
	// ClientAddr is where the KeyStoreService listens.
	ClientAddr string
	// PeerAddr is where peers connect.
	PeerAddr string
	// InitialCluster maps every member's name to its peer address.
	InitialCluster map[string]string
	// AdvertisePeerAddr and AdvertiseClientAddr are the addresses other
	// nodes and clients reach this node at, when they differ from
	// PeerAddr and ClientAddr (which may listen on every interface).
	AdvertisePeerAddr, AdvertiseClientAddr string
	// PeerRoutes maps members (by name) to the address this node dials
	// them at, whatever address the log or gossip has for them: a proxy or
	// NAT in between (the fault tests' proxies). A member that joins later
	// under a routed name is dialled at its route too.
	PeerRoutes map[string]string
	// Join lists where to find an existing cluster. Without gossip they
	// are client addresses of its members: a node with an empty data dir
	// asks them to add it (as a learner) and then is sent the log, instead
	// of bootstrapping from InitialCluster. With gossip (GossipAddr) they
	// are gossip addresses of any nodes: the node joins the gossip pool,
	// and, if it has no state and is not named by InitialCluster (or
	// InitialClusterState is existing), asks the members gossip shows it.
	Join []string
	// GossipAddr, when set, is where this node gossips (package
	// membership), host:port; AdvertiseGossipAddr the address others
	// reach it at, if different.
	GossipAddr, AdvertiseGossipAddr string
	// GossipKeys encrypt and authenticate gossip (see ReadGossipKeys);
	// nil: none.
	GossipKeys [][]byte
	// GossipFast uses gossip timings for tests on one machine.
	GossipFast bool
	// BootstrapExpect: with an empty data dir, wait until this many nodes
	// (this one included) found each other by gossip, and bootstrap them
	// as one cluster, unless gossip shows a cluster already, which the
	// node then joins. Needs GossipAddr; InitialCluster is not used.
	BootstrapExpect int
	// InitialClusterState is ClusterStateNew (default: with an empty data
	// dir, bootstrap InitialCluster) or ClusterStateExisting (never
	// bootstrap: an empty data dir needs Join).
	InitialClusterState string
	// ClusterToken tells this cluster from others whose members have the
	// same names; with the member names it makes the cluster id that every
	// peer message carries (default "keystore").
	ClusterToken string

	// ClientTLS, when set, serves the client port over TLS with it (use
	// internal/tlsconf's ServerConfig, whose certificate and CA reload);
	// nil serves plaintext, and the node warns at start.
	ClientTLS *tls.Config
	// PeerTLS, when set, makes the peer port mutual TLS with each peer's
	// certificate checked against the member it says it is (see
	// raftnode.PeerTLS); nil: plaintext, and the node warns at start.
	PeerTLS *raftnode.PeerTLS
	// Auth, when set, authenticates every client call (but health) and
	// authorizes each operation's namespace and the admin calls by its
	// policy; nil: every caller may do everything, and the node warns.
	Auth *auth.Authorizer
	// Limits bound connections, streams and metadata on the client port.
	Limits Limits
	// JoinDialOptions are how a joining node calls the members' client
	// ports to be added (MemberAdd, an admin call): with TLS and auth on,
	// TLS to their CA and an admin credential (keystored uses the node's
	// certificate, whose name the policy must make admin, or a token).
	// Empty: plaintext, no credential.
	JoinDialOptions []grpc.DialOption

	// ClientListener and PeerListener, when set, are used instead of
	// listening on ClientAddr and PeerAddr (tests bind :0 first).
	ClientListener, PeerListener net.Listener

	// Metrics sets what the node's Prometheus collectors cover
	// (Collectors).
	Metrics MetricsConfig
	// API holds the service's defaults and limits.
	API api.Config
	// Batch tunes the batch and stream service.
	Batch api.BatchConfig
	// Raft holds timings and compaction settings; ID and Peers are derived
	// from Name and InitialCluster.
	Raft raftnode.Config
	// Expiry holds the sweep interval and batch size.
	Expiry expiry.Config
	// FS is the storage filesystem; nil is the operating system's.
	FS vfs.FS
	// StorageFatal is called, and must not return, when the state store
	// meets an error it cannot survive (see storage.Config.Fatal);
	// keystored logs and exits. nil panics.
	StorageFatal func(msg string)
	// Logger receives all logs; nil discards them.
	Logger *slog.Logger
}

// ParseCluster parses "n1=127.0.0.1:7101,n2=127.0.0.1:7102".
func ParseCluster(s string) (map[string]string, error) {
	out := make(map[string]string)
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, addr, ok := strings.Cut(part, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("initial cluster: %q is not name=host:port", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("initial cluster: %q: %v", part, err)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("initial cluster: %q named twice", name)
		}
		out[name] = addr
	}
	return out, nil
}

// Validate reports a configuration error.
func (c Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("server: Name is required")
	case c.DataDir == "":
		return errors.New("server: DataDir is required")
	case c.ClientAddr == "" && c.ClientListener == nil:
		return errors.New("server: ClientAddr is required")
	case c.PeerAddr == "" && c.PeerListener == nil:
		return errors.New("server: PeerAddr is required")
	}
	switch c.InitialClusterState {
	case "", ClusterStateNew, ClusterStateExisting:
	default:
		return fmt.Errorf("server: initial cluster state %q: want %q or %q", c.InitialClusterState, ClusterStateNew, ClusterStateExisting)
	}
	switch {
	case c.BootstrapExpect < 0:
		return errors.New("server: bootstrap-expect must not be negative")
	case c.BootstrapExpect > 0 && c.GossipAddr == "":
		return errors.New("server: bootstrap-expect needs gossip: give --gossip-addr and --join")
	case c.BootstrapExpect > 0 && len(c.InitialCluster) > 0:
		return errors.New("server: give either an initial cluster or bootstrap-expect, not both")
	case c.BootstrapExpect > 0 && c.advertisedPeerAddr() == "":
		return errors.New("server: with bootstrap-expect, this node must tell the others its peer address: --peer-addr listens on every interface, so give --advertise-peer-addr")
	}
	if _, ok := c.InitialCluster[c.Name]; !ok && len(c.Join) == 0 && c.BootstrapExpect == 0 {
		return fmt.Errorf("server: initial cluster does not name this member %q", c.Name)
	}
	ids := make(map[uint64]string)
	for name := range c.InitialCluster {
		id := raftnode.IDFromName(name)
		if other, dup := ids[id]; dup {
			return fmt.Errorf("server: member names %q and %q collide", name, other)
		}
		ids[id] = name
	}
	api := c.API
	if api.Usage == nil {
		// New gives the API the store's usage; judge the rest here.
		api.Usage = func(string) (int64, int64) { return 0, 0 }
	}
	return api.Validate()
}

// Server is one running keystore node.
type Server struct {
	cfg       Config
	logger    *slog.Logger
	clusterID uint64
	// startPeers are the peer addresses the node started with, for the
	// members that have not published theirs yet.
	startPeers map[uint64]string
	store      *storage.Store
	node       *raftnode.Node
	sweep      *expiry.Sweeper
	health     *health.Server
	gossip     *gossiper
	metrics    *nodeMetrics
	// backingUp is set while a Backup streams (one at a time per node).
	backingUp atomic.Bool

	client, peer       *grpc.Server
	batch              *api.BatchService // drained before client stops
	clientLis, peerLis net.Listener
	serving            atomic.Bool // what health reports
	healthTimings      healthTimings
	stopHealth         chan struct{}

	// group runs the goroutines Start starts (see Start); failed is
	// closed once one of them failed (the group's context is done).
	group  *errgroup.Group
	failed <-chan struct{}
	// stopping is closed when Stop begins, stopped when it has finished;
	// err, set before stopped closes, is what Wait returns.
	stopping, stopped chan struct{}
	err               error
	stopOnce          sync.Once
}

// failureGrace is how long in-flight client calls get to finish when the
// node stops itself because a listener failed (see Start).
const failureGrace = 5 * time.Second

// healthServices are the names whose health the node reports ("" is the
// whole server).
var healthServices = []string{"", keystorev1.KeyStoreService_ServiceDesc.ServiceName}

// New opens the store and builds the node; Start serves it.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("node", cfg.Name)
	if err := privateDir(cfg, logger); err != nil {
		return nil, err
	}
	metrics := newNodeMetrics(cfg.Metrics)
	store, err := storage.Open(storage.Config{Dir: filepath.Join(cfg.DataDir, "db"), FS: cfg.FS, Logger: logger, Fatal: cfg.StorageFatal,
		CountUsage:   cfg.API.MaxNamespaceRecords > 0 || cfg.API.MaxNamespaceBytes > 0 || cfg.Metrics.NamespaceUsage,
		ObserveFsync: func(d time.Duration) { metrics.fsync.Observe(d.Seconds()) }})
	if err != nil {
		return nil, err
	}
	gs := newGossiper(cfg, logger)
	st, err := resolveIdentity(cfg, store, logger, gs)
	if err == nil {
		_, err = gs.start(st.id.NodeID, st.id.ClusterID)
	}
	if err != nil {
		gs.stop(false)
		_ = store.Close()
		return nil, err
	}
	if gs.g != nil {
		if err := gs.g.Update(func(m *membership.Member) { m.ClusterID = st.id.ClusterID }); err != nil {
			logger.Warn("gossiping this node's cluster failed", "err", err)
		}
	}
	// fail undoes New's work so far.
	fail := func(err error) (*Server, error) {
		gs.stop(false)
		_ = store.Close()
		return nil, err
	}
	rc := cfg.Raft
	rc.ID, rc.ClusterID = st.id.NodeID, st.id.ClusterID
	rc.Peers, rc.Names, rc.Join = st.peers, st.names, st.join
	book := &peerBook{routes: cfg.PeerRoutes, cluster: st.id.ClusterID}
	book.gossip.Store(gs.g)
	rc.Resolve = book.resolve
	rc.CheckForwarded = api.CheckCommand
	rc.PeerTLS = cfg.PeerTLS
	rc.Logger = logger
	node, err := raftnode.New(rc, store, store)
	if err != nil {
		return fail(err)
	}
	ec := cfg.Expiry
	ec.Logger = logger
	sweep, err := expiry.New(ec, node, store)
	if err != nil {
		return fail(err)
	}
	apiCfg := cfg.API
	apiCfg.Logger = logger
	apiCfg.Metrics = metrics.api
	apiCfg.LogNow = node.LogNow
	apiCfg.IsLeader = node.IsLeader
	if cfg.Auth != nil {
		apiCfg.Access = policyAccess{}
	}
	apiCfg.Usage = func(ns string) (int64, int64) {
		u := store.NamespaceUsage(ns)
		return u.Records, u.Bytes
	}
	svc, err := api.NewService(apiCfg, node, store)
	if err != nil {
		return fail(err)
	}
	apiCfg = apiCfg.WithDefaults()
	s := &Server{
		cfg:           cfg,
		clusterID:     st.id.ClusterID,
		startPeers:    st.peers,
		logger:        logger,
		store:         store,
		node:          node,
		sweep:         sweep,
		health:        health.NewServer(),
		gossip:        gs,
		healthTimings: defaultHealthTimings,
		stopHealth:    make(chan struct{}),
		stopping:      make(chan struct{}),
		stopped:       make(chan struct{}),
		// Room for the largest body plus metadata and framing, so that an
		// oversize value gets INVALID_ARGUMENT naming the limit. Fixed
		// windows turn off gRPC's bandwidth-delay probe (a PING and its
		// ACK for nearly every message; raftnode/DESIGN.md, Transport).
		client: grpc.NewServer(clientOptions(cfg, apiCfg, metrics, logger)...),
		// Forward carries a client's command, as large as the client
		// server admits.
		peer:    grpc.NewServer(peerOptions(cfg, metrics)...),
		metrics: metrics,
	}
	keystorev1.RegisterKeyStoreServiceServer(s.client, svc)
	s.batch = api.NewBatchService(svc, cfg.Batch)
	keystorev1.RegisterBatchServiceServer(s.client, s.batch)
	keystorev1.RegisterClusterServiceServer(s.client, clusterService{s: s})
	healthpb.RegisterHealthServer(s.client, s.health)
	reflection.Register(s.client)
	peerv1.RegisterPeerServiceServer(s.peer, node.PeerServer())
	// Every method's series from the start, at zero: rates and alerts
	// need no first call.
	metrics.rpc.InitializeMetrics(s.client)
	metrics.rpc.InitializeMetrics(s.peer)
	for _, name := range healthServices {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	group, failed := errgroup.WithContext(context.Background())
	s.group, s.failed = group, failed.Done()
	return s, nil
}

// clientOptions are the client port's gRPC server options: message size
// room for the largest body plus metadata and framing (an oversize value
// gets INVALID_ARGUMENT naming the limit), fixed flow-control windows
// (they turn off gRPC's bandwidth-delay probe, a PING and its ACK for
// nearly every message; raftnode/DESIGN.md, Transport), TLS, limits, the
// lenient codec and the interceptors (security.go).
func clientOptions(cfg Config, apiCfg api.Config, m *nodeMetrics, logger *slog.Logger) []grpc.ServerOption {
	unary, stream := clientInterceptors(cfg, logger)
	// Outermost: every call is counted and timed, refused ones included.
	unary = append([]grpc.UnaryServerInterceptor{m.rpc.UnaryServerInterceptor()}, unary...)
	stream = append([]grpc.StreamServerInterceptor{m.rpc.StreamServerInterceptor()}, stream...)
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(apiCfg.MaxBodyBytes + apiCfg.MaxMetadataBytes + 1<<20), fixedWindows, fixedConnWindows,
		clientCodec(), grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...),
	}
	if cfg.ClientTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.ClientTLS)))
	}
	return append(opts, cfg.Limits.withDefaults().serverOptions()...)
}

// peerOptions are the peer port's gRPC server options.
func peerOptions(cfg Config, m *nodeMetrics) []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(raftnode.MaxMessageBytes), fixedWindows, fixedConnWindows,
		grpc.ChainUnaryInterceptor(m.rpc.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(m.rpc.StreamServerInterceptor())}
	if cfg.PeerTLS != nil {
		opts = append(opts, grpc.Creds(raftnode.PeerServerCredentials()))
	}
	return opts
}

// warnInsecure says at start what the node exposes without TLS or auth.
func (s *Server) warnInsecure() {
	if s.cfg.ClientTLS == nil {
		s.logger.Warn("client port without TLS: requests, stored responses and bearer tokens cross the network in clear text (--tls-cert-file)")
	}
	if s.cfg.PeerTLS == nil {
		s.logger.Warn("peer port without TLS: anyone who reaches it and knows the member names can replicate into this cluster (--peer-tls-cert-file)")
	}
	if s.cfg.Auth == nil {
		s.logger.Warn("no authorization policy: every caller may read and write every namespace and change the membership (--auth-policy-file)")
	}
}

// Start listens (unless given listeners), starts Raft and serves.
func (s *Server) Start() error {
	var err error
	s.peerLis = s.cfg.PeerListener
	if s.peerLis == nil {
		if s.peerLis, err = net.Listen("tcp", s.cfg.PeerAddr); err != nil {
			s.gossip.stop(false)
			_ = s.store.Close()
			s.abandon()
			return fmt.Errorf("server: listen peer: %w", err)
		}
	}
	s.clientLis = s.cfg.ClientListener
	if s.clientLis == nil {
		if s.clientLis, err = net.Listen("tcp", s.cfg.ClientAddr); err != nil {
			_ = s.peerLis.Close()
			s.gossip.stop(false)
			_ = s.store.Close()
			s.abandon()
			return fmt.Errorf("server: listen client: %w", err)
		}
	}
	s.clientLis = s.cfg.Limits.withDefaults().listener(s.clientLis)
	s.warnInsecure()
	if err := s.node.Start(); err != nil {
		_ = s.peerLis.Close()
		_ = s.clientLis.Close()
		s.gossip.stop(false)
		_ = s.store.Close()
		s.abandon()
		return err
	}
	s.sweep.Start()
	// Goroutines. The raft node and the sweeper run their own, which their
	// Stop waits for. Start runs three more under s.group; each returns
	// once Stop has stopped what it runs, and Stop waits for them
	// (group.Wait):
	//   - the peer gRPC server on the peer port. Raft's own connections are
	//     split off that port first (raftnode's rawpeer.go; Forward goes to
	//     gRPC) by an accept loop that retries a failed Accept and ends when
	//     the port's listener is closed, which then fails this Serve too;
	//   - the client gRPC server on the client port;
	//   - the health loop, until stopHealth closes.
	// A Serve that returns while the node is not stopping is a failure
	// (gRPC's Serve returns nil only after a Stop): the group records the
	// first and closes s.failed, and the watcher below stops the node,
	// so that Wait returns that error. The watcher lives until Stop begins
	// (whoever calls it) or, after a failure, until its own Stop returns.
	peerGRPC := s.node.SplitPeerListener(s.peerLis)
	s.group.Go(func() error { return s.serveError("peer", s.peer.Serve(peerGRPC)) })
	s.group.Go(func() error { return s.serveError("client", s.client.Serve(s.clientLis)) })
	s.group.Go(func() error { s.healthLoop(); return nil })
	s.group.Go(func() error { s.publishLoop(); return nil })
	if s.gossip.g != nil {
		s.group.Go(func() error { s.gossipLoop(); return nil })
	}
	// A node removed from the cluster stops serving: Wait returns
	// raftnode.ErrRemoved.
	s.group.Go(func() error {
		select {
		case <-s.node.Done():
			if s.node.Removed() {
				s.logger.Warn("stopping: this node was removed from the cluster")
				return raftnode.ErrRemoved
			}
		case <-s.stopping:
		}
		return nil
	})
	go func() {
		select {
		case <-s.failed:
			s.Stop(failureGrace)
		case <-s.stopping:
		}
	}()
	s.logger.Info("serving", "client_addr", s.clientLis.Addr().String(), "peer_addr", s.peerLis.Addr().String())
	return nil
}

// abandon marks a node whose Start failed (and undid its work) as
// stopped: a later Stop returns at once.
func (s *Server) abandon() {
	s.stopOnce.Do(func() {
		close(s.stopping)
		close(s.stopped)
	})
}

// serveError is what the goroutine serving the what port returns when its
// Serve returned err: nil once Stop has begun (Stop closes the listeners),
// the error otherwise.
func (s *Server) serveError(what string, err error) error {
	select {
	case <-s.stopping:
		return nil
	default:
	}
	if err == nil {
		err = errors.New("stopped serving")
	}
	s.logger.Error("stopping: a listener failed", "port", what, "err", err)
	return fmt.Errorf("server: serve %s port: %w", what, err)
}

// Wait blocks until the node has stopped, by Stop or by itself when a
// listener failed, and returns the first failure of a listener before Stop
// began: nil after a Stop of a node that was serving fine. Call it only
// after a successful Start; any number of goroutines may.
func (s *Server) Wait() error {
	<-s.stopped
	return s.err
}

// ClientAddr returns the address the KeyStoreService listens on.
func (s *Server) ClientAddr() string { return s.clientLis.Addr().String() }

// ClusterID returns the id of the cluster the node belongs to.
func (s *Server) ClusterID() uint64 { return s.clusterID }

// Store returns the node's store (tests compare checksums).
func (s *Server) Store() *storage.Store { return s.store }

// Status returns the Raft node's view.
func (s *Server) Status() raftnode.Status { return s.node.Status() }

// Stop stops serving: in-flight client calls get up to grace to finish,
// then the node stops and the store closes. Stop waits for all of it; a
// second call waits for the first to finish.
func (s *Server) Stop(grace time.Duration) {
	s.stopOnce.Do(func() {
		// A leader hands leadership over first, so that its stop costs the
		// cluster no election timeout (a rolling restart).
		ctx, cancel := context.WithTimeout(context.Background(), transferTimeout(s.cfg.Raft))
		if err := s.node.TransferLeadership(ctx); err != nil {
			s.logger.Warn("leadership transfer before stopping failed", "err", err)
		}
		cancel()
		close(s.stopping)
		// NOT_SERVING for good: a report of the health loop racing with
		// Stop is ignored.
		s.health.Shutdown()
		close(s.stopHealth)
		s.batch.Drain()
		done := make(chan struct{})
		go func() { s.client.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(grace):
			s.client.Stop()
		}
		s.sweep.Stop()
		s.node.Stop()
		s.peer.Stop()
		s.err = s.group.Wait()
		// Leave the gossip pool: the others see this node left, not
		// failed.
		s.gossip.stop(true)
		if err := s.store.Close(); err != nil {
			s.logger.Error("closing store", "err", err)
		}
		s.logger.Info("stopped")
		close(s.stopped)
	})
}

// transferTimeout bounds the leadership transfer before a stop: two
// election timeouts.
func transferTimeout(rc raftnode.Config) time.Duration {
	tick, ticks := rc.TickInterval, rc.ElectionTicks
	if tick <= 0 {
		tick = 100 * time.Millisecond
	}
	if ticks <= 0 {
		ticks = 10
	}
	return 2 * tick * time.Duration(ticks)
}

// Health. A node reports SERVING only while it can answer for the cluster:
// its storage works, it knows a leader, and it has applied what the leader
// had committed a moment ago. It cannot judge the last by the commit index it
// knows itself: raft tells a follower commit indexes only up to what it has
// matched, so a follower that restarts far behind believes itself caught up
// until the leader's appends or snapshot reach it (issue 17: SERVING at
// applied index 622 with the cluster at 16,912). It learns the leader's by a
// ReadIndex round, which returns once this node has applied everything
// committed before the round began, as confirmed by a quorum.
//
// So healthLoop looks at the node's Status every healthTimings.poll and runs
// at most one round every healthTimings.probeEvery:
//   - NOT_SERVING at once when unfit says so (a storage failure stopped the
//     node, no leader is known, or the node is more than maxServingLag
//     entries behind the commit index it knows, as while it installs a
//     snapshot); rounds begun before that prove nothing afterwards;
//   - otherwise SERVING once a round returns within joinTimeout, and for as
//     long as every later round returns within stayTimeout. A round that
//     does not (the node fell too far behind to catch up in that time, or no
//     quorum confirmed the leader) makes it NOT_SERVING. The longer
//     stayTimeout is the hysteresis: a serving node may lag a little more
//     than one that asks to serve.
//
// Rounds are cheap: raft answers one with a heartbeat round, and rounds that
// overlap with client reads share it (raftnode/read.go).

// healthTimings are the health loop's intervals and timeouts.
type healthTimings struct {
	poll        time.Duration // how often Status is looked at
	probeEvery  time.Duration // at most one ReadIndex round per probeEvery
	joinTimeout time.Duration // a round's limit for a node that does not serve
	stayTimeout time.Duration // a round's limit for a serving node
}

var defaultHealthTimings = healthTimings{
	poll:        100 * time.Millisecond,
	probeEvery:  time.Second,
	joinTimeout: time.Second,
	stayTimeout: 2 * time.Second,
}

// maxServingLag is how far behind the commit index it knows a node may fall
// before it reports NOT_SERVING without waiting for a ReadIndex round (a
// follower always learns a commit index a moment before it applies it).
const maxServingLag = 1000

// healthNode is what the health loop asks of the Raft node
// (*raftnode.Node).
type healthNode interface {
	Status() raftnode.Status
	ReadIndex(ctx context.Context) error
}

// unfit returns why the node's own view rules out serving, or "" if it
// does not.
func unfit(st raftnode.Status) string {
	switch {
	case !st.Healthy:
		return "storage failure"
	case st.Leader == 0:
		return "no leader"
	case st.InstallingSnapshot:
		return "installing a snapshot"
	case st.Applied+maxServingLag < st.Commit:
		return "applying"
	}
	return ""
}

// healthLoop reports the node's health until Stop (see "Health" above).
func (s *Server) healthLoop() {
	watchHealth(s.stopHealth, s.node, s.healthTimings, s.setServing)
}

// setServing is what watchHealth reports to: the health service, the
// ClusterService status and the log.
func (s *Server) setServing(ok bool, st raftnode.Status, why string) {
	s.serving.Store(ok)
	state := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		state = healthpb.HealthCheckResponse_SERVING
	}
	for _, name := range healthServices {
		s.health.SetServingStatus(name, state)
	}
	s.logger.Info("health", "serving", ok, "reason", why, "leader", fmt.Sprintf("%x", st.Leader), "applied", st.Applied, "commit", st.Commit)
}

// watchHealth decides whether node serves until stop is closed, calling
// report at every change (why says what ruled serving out; "" when it
// serves). It starts out not serving. It returns only once the ReadIndex
// round it started, if any, has returned.
func watchHealth(stop <-chan struct{}, node healthNode, tm healthTimings, report func(ok bool, st raftnode.Status, why string)) {
	type result struct {
		epoch uint64
		err   error
	}
	ctx, cancel := context.WithCancel(context.Background())
	results := make(chan result, 1)
	var (
		serving   bool
		confirmed bool      // the last round of this epoch returned in time
		probing   bool      // a round is under way
		lastProbe time.Time // when the last round began
		lastErr   error     // why the last round failed
		// epoch counts the times the node was unfit: a round begun
		// before proves nothing after.
		epoch uint64
	)
	defer func() {
		cancel()
		if probing {
			<-results
		}
	}()
	poll := time.NewTicker(tm.poll)
	defer poll.Stop()
	for {
		select {
		case <-stop:
			return
		case r := <-results:
			probing = false
			if r.epoch == epoch {
				confirmed, lastErr = r.err == nil, r.err
			}
		case <-poll.C:
		}
		st := node.Status()
		why := unfit(st)
		if why != "" {
			epoch++
			confirmed = false
		} else if !probing && time.Since(lastProbe) >= tm.probeEvery {
			timeout := tm.joinTimeout
			if serving {
				timeout = tm.stayTimeout
			}
			probing, lastProbe = true, time.Now()
			go func(epoch uint64) {
				rctx, rcancel := context.WithTimeout(ctx, timeout)
				err := node.ReadIndex(rctx)
				rcancel()
				results <- result{epoch, err}
			}(epoch)
		}
		ok := why == "" && confirmed
		if ok == serving {
			continue
		}
		serving = ok
		if !ok && why == "" {
			why = fmt.Sprintf("not caught up with the leader's commit index within %s: %v", tm.stayTimeout, lastErr)
		}
		report(ok, st, why)
	}
}

// HTTP/2 flow-control windows of the servers (see New).
var (
	fixedWindows     = grpc.InitialWindowSize(1 << 20)
	fixedConnWindows = grpc.InitialConnWindowSize(1 << 20)
)

// privateDir makes the data directory (on the operating system's
// filesystem) readable by this user alone: it holds every namespace's
// stored responses. A directory created looser (0755 by an older version,
// or by hand) is tightened, and the log says so.
func privateDir(cfg Config, logger *slog.Logger) error {
	if cfg.FS != nil {
		return nil
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	fi, err := os.Stat(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := os.Chmod(cfg.DataDir, perm&0o700); err != nil {
			return fmt.Errorf("server: data dir: %w", err)
		}
		logger.Warn("made the data directory private to this user", "dir", cfg.DataDir, "was", perm.String())
	}
	return nil
}

// fs is the filesystem of the node's data.
func (c Config) fs() vfs.FS {
	if c.FS == nil {
		return vfs.Default
	}
	return c.FS
}

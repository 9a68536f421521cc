// Package testcluster runs keystore clusters inside a test process: real
// nodes (storage, Raft, gRPC) talking over loopback, with temp-dir storage
// or Pebble's crashable in-memory filesystem (optionally wrapped, to inject
// storage faults), and helpers to stop, crash and restart nodes. Tests of
// every package above the server use it.
package testcluster

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/api"
	"github.com/keystore-dev/keystore/expiry"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"github.com/keystore-dev/keystore/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Options configures a cluster.
type Options struct {
	// Size is the number of nodes (default 3).
	Size int
	// Crashable keeps each node's storage on a crashable in-memory
	// filesystem, so CrashNode keeps exactly what was fsynced.
	Crashable bool
	// WrapFS, when set, wraps a node's storage filesystem (the operating
	// system's, or the crashable in-memory one) every time the node starts;
	// name is the node's name. Tests inject storage faults and latency
	// through it, with Pebble's vfs/errorfs. It is called from StartNode's
	// goroutine; what it returns is used until the node stops.
	WrapFS func(name string, fs vfs.FS) vfs.FS
	// Gossip runs gossip on every node (fast timings), each seeded with
	// the others' gossip addresses; a node that joins (AddNode, Rejoin)
	// then finds the cluster by gossip.
	Gossip  bool
	Raft    raftnode.Config
	Expiry  expiry.Config
	API     api.Config
	Metrics server.MetricsConfig
}

// Cluster is a running in-process cluster. Its nodes are named n1, n2, ...
type Cluster struct {
	// Names lists the nodes in order.
	Names []string

	t       testing.TB
	opts    Options
	peers   map[string]string
	clients map[string]string
	dirs    map[string]string
	fss     map[string]*vfs.MemFS
	servers map[string]*server.Server
	conns   map[string]*grpc.ClientConn
	joins   map[string][]string // nodes that join through these client addresses
	gossips map[string]string   // each node's gossip address (Options.Gossip)
	// lis holds each node's listeners (peer, client) from Start until the
	// node first starts on them, so no other process can take the ports
	// in between (a port merely free a moment ago may go to any outgoing
	// connection's ephemeral port meanwhile).
	lis  map[string][2]net.Listener
	root string
	// mu guards lis, servers and conns while Start starts nodes at once.
	mu sync.Mutex
}

// Start starts a cluster, waits until every node serves, and stops it when
// the test ends.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Size == 0 {
		opts.Size = 3
	}
	c := &Cluster{
		t: t, opts: opts,
		peers: map[string]string{}, clients: map[string]string{}, dirs: map[string]string{},
		fss: map[string]*vfs.MemFS{}, servers: map[string]*server.Server{}, conns: map[string]*grpc.ClientConn{},
		joins: map[string][]string{}, gossips: map[string]string{},
		lis: map[string][2]net.Listener{},
	}
	c.root = t.TempDir()
	for i := 1; i <= opts.Size; i++ {
		n := "n" + string(rune('0'+i))
		c.Names = append(c.Names, n)
		peer, client := listen(t), listen(t)
		c.lis[n] = [2]net.Listener{peer, client}
		c.peers[n], c.clients[n] = peer.Addr().String(), client.Addr().String()
		c.dirs[n] = filepath.Join(c.root, n)
		if opts.Gossip {
			c.gossips[n] = FreeAddr(t)
		}
		if opts.Crashable {
			c.fss[n] = vfs.NewCrashableMem()
		}
	}
	// All at once, as a cluster's nodes start: each asks the others
	// whether it ran before (server's checkNotStarted) while they start.
	errs := make([]error, len(c.Names))
	var wg sync.WaitGroup
	for i, n := range c.Names {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.TryStartNode(n) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, n := range c.Names {
			if s := c.servers[n]; s != nil {
				wg.Add(1)
				go func() { defer wg.Done(); s.Stop(time.Second) }()
			}
		}
		wg.Wait()
		clear(c.servers)
		for _, l := range c.lis {
			_ = l[0].Close()
			_ = l[1].Close()
		}
		for _, conn := range c.conns {
			_ = conn.Close()
		}
	})
	c.WaitServing(15 * time.Second)
	return c
}

// FreeAddr returns a loopback address whose port (TCP and UDP, for
// gossip) was free a moment ago, one no other caller in this process got.
// It is below Linux's ephemeral range (32768-60999): a port the kernel
// hands out for ":0" may, once closed, become the source port of any
// outgoing connection before the node binds it ("address already in use"
// under load), while a port below the range is taken only by a listener
// that names it.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range 1000 {
		addr := fmt.Sprintf("127.0.0.1:%d", 12000+rand.IntN(8000))
		if _, dup := handedOut.LoadOrStore(addr, true); dup {
			continue
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		_ = l.Close()
		if err != nil {
			continue
		}
		_ = u.Close()
		return addr
	}
	t.Fatal("testcluster: no free port in 12000-19999")
	return ""
}

// handedOut holds every address FreeAddr gave in this process.
var handedOut sync.Map

func listen(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// StartNode starts (or restarts, with its data) the node name.
func (c *Cluster) StartNode(name string) {
	c.t.Helper()
	if err := c.TryStartNode(name); err != nil {
		c.t.Fatal(err)
	}
}

// TryStartNode is StartNode that returns the error of a node that does not
// start (a storage fault at open, say) instead of failing the test. The
// node is then not running; it may be started again.
func (c *Cluster) TryStartNode(name string) error {
	c.t.Helper()
	cfg := server.Config{
		Name:           name,
		DataDir:        c.dirs[name],
		ClientAddr:     c.clients[name],
		PeerAddr:       c.peers[name],
		InitialCluster: c.peers,
		Join:           c.joins[name],
		Raft:           c.opts.Raft,
		Expiry:         c.opts.Expiry,
		API:            c.opts.API,
		Metrics:        c.opts.Metrics,
	}
	if c.opts.Gossip {
		cfg.GossipAddr, cfg.GossipFast, cfg.Join = c.gossips[name], true, nil
		for _, n := range c.Names {
			if n != name {
				cfg.Join = append(cfg.Join, c.gossips[n])
			}
		}
		if len(c.joins[name]) > 0 {
			cfg.InitialClusterState = server.ClusterStateExisting
		}
	}
	if c.opts.Crashable {
		cfg.FS = c.fss[name]
	}
	if c.opts.WrapFS != nil {
		fs := cfg.FS
		if fs == nil {
			fs = vfs.Default
		}
		cfg.FS = c.opts.WrapFS(name, fs)
	}
	c.mu.Lock()
	if l, ok := c.lis[name]; ok {
		cfg.PeerListener, cfg.ClientListener = l[0], l[1]
		delete(c.lis, name)
	}
	c.mu.Unlock()
	// On a restart the ports were ours a moment ago; retry briefly if the
	// OS is slow to release them after a stop.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := server.New(cfg)
		if err != nil {
			if cfg.PeerListener != nil {
				// New does not take the listeners: keep them for the
				// next try.
				c.mu.Lock()
				c.lis[name] = [2]net.Listener{cfg.PeerListener, cfg.ClientListener}
				c.mu.Unlock()
			}
			return fmt.Errorf("new %s: %w", name, err)
		}
		err = s.Start()
		if err == nil {
			c.mu.Lock()
			c.servers[name] = s
			c.mu.Unlock()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start %s: %w", name, err)
		}
		// A failed Start closed any listeners it was given.
		cfg.PeerListener, cfg.ClientListener = nil, nil
		time.Sleep(50 * time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conns[name] == nil {
		conn, err := grpc.NewClient(c.clients[name], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		c.conns[name] = conn
	}
	return nil
}

// AddNode starts a new node, name, with an empty data dir, that joins the
// running cluster through node via's client address: it is added as a
// learner, sent the log, and promoted by the leader once caught up. It
// waits until the new node serves.
func (c *Cluster) AddNode(name, via string) {
	c.t.Helper()
	if _, ok := c.dirs[name]; ok {
		c.t.Fatalf("testcluster: node %s exists", name)
	}
	peer, client := listen(c.t), listen(c.t)
	c.lis[name] = [2]net.Listener{peer, client}
	c.peers[name], c.clients[name] = peer.Addr().String(), client.Addr().String()
	if c.opts.Gossip {
		c.gossips[name] = FreeAddr(c.t)
	}
	c.Names = append(c.Names, name)
	c.Rejoin(name, via)
}

// Rejoin starts node name afresh: its data dir is wiped (a disk that was
// replaced) and it joins the cluster through node via, under a new id.
// The old member must have been removed first. It waits until the node
// serves.
func (c *Cluster) Rejoin(name, via string) {
	c.t.Helper()
	c.StopNode(name)
	c.dirs[name] = filepath.Join(c.root, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	if c.opts.Crashable {
		c.fss[name] = vfs.NewCrashableMem()
	}
	c.joins[name] = []string{c.clients[via]}
	c.StartNode(name)
	deadline := time.Now().Add(15 * time.Second)
	for !c.serving(name) {
		if time.Now().After(deadline) {
			c.t.Fatalf("testcluster: %s does not serve 15s after joining", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Move restarts node name, its data kept, on new peer and client
// addresses (a node rescheduled onto another host): the others learn the
// new peer address by gossip (Options.Gossip), or once the node published
// it in the log. It does not wait for the node to serve.
func (c *Cluster) Move(name string) {
	c.t.Helper()
	c.StopNode(name)
	peer, client := listen(c.t), listen(c.t)
	c.mu.Lock()
	c.lis[name] = [2]net.Listener{peer, client}
	c.peers[name], c.clients[name] = peer.Addr().String(), client.Addr().String()
	if conn := c.conns[name]; conn != nil {
		_ = conn.Close()
		delete(c.conns, name)
	}
	c.mu.Unlock()
	c.StartNode(name)
}

// Wipe stops node name and gives it an empty data dir: the next
// StartNode starts it as a node whose disk was lost.
func (c *Cluster) Wipe(name string) {
	c.t.Helper()
	c.StopNode(name)
	c.dirs[name] = filepath.Join(c.root, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	if c.opts.Crashable {
		c.fss[name] = vfs.NewCrashableMem()
	}
	delete(c.joins, name)
}

// StopNode stops a node gracefully (a no-op if it is not running).
func (c *Cluster) StopNode(name string) {
	if s := c.servers[name]; s != nil {
		s.Stop(time.Second)
		delete(c.servers, name)
	}
}

// CrashNode stops a node as a power loss would: on restart its filesystem
// holds only what was synced before the crash. Needs Options.Crashable.
//
// NB: the node is stopped (without grace) after its filesystem is cloned,
// and in between it may still sync and acknowledge Raft entries that its
// restart will lack; its leader would then hold it to entries it no longer
// has (raft panics: "tocommit(..) is out of range"). Crash a node only when
// nothing is written meanwhile, or after its storage failed (it
// acknowledges nothing then); otherwise use StopNode.
func (c *Cluster) CrashNode(name string) {
	c.t.Helper()
	if !c.opts.Crashable {
		c.t.Fatal("testcluster: CrashNode needs Options.Crashable")
	}
	clone := c.fss[name].CrashClone(vfs.CrashCloneCfg{})
	if s := c.servers[name]; s != nil {
		s.Stop(0)
		delete(c.servers, name)
	}
	c.fss[name] = clone
}

// Client returns a KeyStoreService client of node name.
func (c *Cluster) Client(name string) keystorev1.KeyStoreServiceClient {
	return keystorev1.NewKeyStoreServiceClient(c.conns[name])
}

// Conn returns the client connection to node name.
func (c *Cluster) Conn(name string) *grpc.ClientConn { return c.conns[name] }

// Endpoints returns every node's client address, running or not.
func (c *Cluster) Endpoints() []string {
	out := make([]string, 0, len(c.Names))
	for _, n := range c.Names {
		out = append(out, c.clients[n])
	}
	return out
}

// Endpoint returns node name's client address.
func (c *Cluster) Endpoint(name string) string { return c.clients[name] }

// PeerEndpoint returns a node's peer address.
func (c *Cluster) PeerEndpoint(name string) string { return c.peers[name] }

// Server returns the running node name, or nil.
func (c *Cluster) Server(name string) *server.Server { return c.servers[name] }

// Leader returns the name of the node that leads, or "".
func (c *Cluster) Leader() string {
	for _, n := range c.Names {
		if s := c.servers[n]; s != nil {
			if st := s.Status(); st.Leader == st.ID {
				return n
			}
		}
	}
	return ""
}

// Follower returns the name of a running node that does not lead.
func (c *Cluster) Follower() string {
	lead := c.Leader()
	for _, n := range c.Names {
		if n != lead && c.servers[n] != nil {
			return n
		}
	}
	return ""
}

// WaitServing waits until every running node reports SERVING.
func (c *Cluster) WaitServing(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for _, n := range c.Names {
		if c.servers[n] == nil {
			continue
		}
		hc := healthpb.NewHealthClient(c.conns[n])
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "keystore.v1.KeyStoreService"})
			cancel()
			if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("%s not SERVING after %s (last: %v, %v)", n, timeout, resp, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// WaitApplied waits until node name has applied index, failing the test
// after timeout.
func (c *Cluster) WaitApplied(name string, index uint64, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for c.servers[name].Status().Applied < index {
		if time.Now().After(deadline) {
			c.t.Fatalf("%s applied %d; want >= %d", name, c.servers[name].Status().Applied, index)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// AssertSameState waits until all running nodes applied the same index,
// then fails the test unless their state machine checksums are equal.
func (c *Cluster) AssertSameState() {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		sums := map[string][32]byte{}
		applied := map[uint64]bool{}
		for _, n := range c.Names {
			s := c.servers[n]
			if s == nil {
				continue
			}
			sum, at, err := s.Store().ChecksumAt()
			if err != nil {
				c.t.Fatal(err)
			}
			applied[at] = true
			sums[n] = sum
		}
		if len(applied) == 1 {
			var first *[32]byte
			for n, s := range sums {
				if first == nil {
					first = &s
				} else if s != *first {
					c.t.Fatalf("state checksum of %s differs at the same applied index", n)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("nodes did not converge on one applied index: %v", applied)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serving reports whether node n's health says SERVING.
func (c *Cluster) serving(n string) bool {
	conn := c.conns[n]
	if conn == nil || c.servers[n] == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "keystore.v1.KeyStoreService"})
	return err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING
}

// ClusterClient returns a ClusterService client of node name.
func (c *Cluster) ClusterClient(name string) keystorev1.ClusterServiceClient {
	return keystorev1.NewClusterServiceClient(c.conns[name])
}

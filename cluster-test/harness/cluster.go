package harness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keystore-dev/keystore/cluster-test/faultproxy"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Build compiles keystored with the fault-test seams (-tags faults: the
// wall clock can be skewed through a file), plus any extra build tags (the
// deliberate bugs of internal/bugs), into dir and returns its path.
func Build(dir string, tags ...string) (string, error) {
	bin := filepath.Join(dir, "keystored")
	tagList := strings.Join(append([]string{"faults"}, tags...), ",")
	cmd := exec.Command("go", "build", "-tags", tagList, "-o", bin, "github.com/keystore-dev/keystore/cmd/keystored")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build keystored: %v\n%s", err, out)
	}
	return bin, nil
}

// Config configures a Cluster.
type Config struct {
	// Binary is keystored's path (see Build).
	Binary string
	// Dir holds the nodes' data and logs.
	Dir string
	// Nodes is the cluster size (default 3).
	Nodes int
	// Args are extra keystored flags for every node; NodeArgs, when set,
	// adds a node's own (its certificate, say).
	Args     []string
	NodeArgs func(name string) []string
	// DialOptions are how the harness calls the nodes' client ports (TLS
	// and an admin credential when they have them); default plaintext.
	DialOptions []grpc.DialOption
	// NoGossip starts the nodes without gossip. By default every node
	// gossips on a loopback port of its own (--gossip-addr) with the
	// others' gossip addresses as --join. Gossip is not proxied: the
	// faults reach Raft's links only, and since a --peer-route by name
	// wins over the addresses gossip spreads, Raft keeps to the proxies.
	NoGossip bool
}

// Cluster is keystored processes whose peer links all pass through fault
// proxies: node i reaches node j at proxy (i, j).
type Cluster struct {
	cfg    Config
	Names  []string
	client map[string]string // name → client address
	peer   map[string]string // name → peer listen address
	gossip map[string]string // name → gossip address (TCP and UDP); empty without gossip
	proxy  map[[2]string]*faultproxy.Proxy

	mu     sync.Mutex
	procs  map[string]*proc
	paused map[string]bool
	// joined names the nodes whose data was wiped and that joined the
	// cluster again under a new Raft id (Rejoin): they start with --join
	// from then on, never with --initial-cluster.
	joined map[string]bool
	conns  map[string]*grpc.ClientConn
}

// proc is a keystored process the harness started.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and been reaped (cmd.ProcessState set)
}

// exited reports whether p has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// freeAddr picks a free loopback port below Linux's ephemeral range
// (32768-60999). A port the kernel hands out for ":0" may, once closed, be
// taken as the source port of any outgoing connection before keystored
// binds it, and a killed node's port again before its restart; ports below
// the range are taken only by a listener that names them.
func freeAddr() (string, error) { return FreeAddr() }

// FreeAddr picks a free loopback TCP port below Linux's ephemeral range
// (see freeAddr's comment), one no other caller in this process was given.
func FreeAddr() (string, error) {
	for range 100 {
		addr, err := pickAddr()
		if err != nil {
			return "", err
		}
		if _, dup := handedOut.LoadOrStore(addr, true); !dup {
			return addr, nil
		}
	}
	return "", errors.New("harness: no fresh free port")
}

// handedOut holds every address FreeAddr gave, so that two nodes of one
// test never get the same port while neither listens yet.
var handedOut sync.Map

func pickAddr() (string, error) {
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: try another
		}
		_ = l.Close()
		return addr, nil
	}
	return "", errors.New("harness: no free port in 20000-31999")
}

// FreeGossipAddr is freeAddr for gossip, which listens on the port for
// TCP and UDP: a loopback port below the ephemeral range free for both.
func FreeGossipAddr() (string, error) {
	for range 100 {
		addr, err := freeAddr()
		if err != nil {
			return "", err
		}
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue // UDP taken: try another
		}
		_ = u.Close()
		return addr, nil
	}
	return "", errors.New("harness: no port in 20000-31999 free for TCP and UDP")
}

// Start starts the proxies and every node.
func Start(cfg Config) (*Cluster, error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	c := &Cluster{
		cfg: cfg, client: map[string]string{}, peer: map[string]string{}, gossip: map[string]string{},
		proxy: map[[2]string]*faultproxy.Proxy{}, procs: map[string]*proc{},
		paused: map[string]bool{}, joined: map[string]bool{}, conns: map[string]*grpc.ClientConn{},
	}
	for i := 1; i <= cfg.Nodes; i++ {
		n := fmt.Sprintf("n%d", i)
		c.Names = append(c.Names, n)
		var err error
		if c.client[n], err = freeAddr(); err != nil {
			return nil, err
		}
		if c.peer[n], err = freeAddr(); err != nil {
			return nil, err
		}
		if !cfg.NoGossip {
			if c.gossip[n], err = FreeGossipAddr(); err != nil {
				return nil, err
			}
		}
	}
	for _, from := range c.Names {
		for _, to := range c.Names {
			if from == to {
				continue
			}
			p, err := faultproxy.New("127.0.0.1:0", c.peer[to])
			if err != nil {
				c.Stop()
				return nil, err
			}
			p.Start()
			c.proxy[[2]string{from, to}] = p
		}
	}
	for _, n := range c.Names {
		dial := cfg.DialOptions
		if len(dial) == 0 {
			dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		}
		conn, err := grpc.NewClient(c.client[n], dial...)
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.conns[n] = conn
		if err := c.StartNode(n); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// initialCluster is node n's view of the members: its peers at the proxies
// in front of them. It is also n's --peer-route, so that n keeps dialling
// the proxies once the members have published their own addresses.
func (c *Cluster) initialCluster(n string) string {
	parts := make([]string, 0, len(c.Names))
	for _, m := range c.Names {
		addr := c.peer[m]
		if m != n {
			addr = c.proxy[[2]string{n, m}].Addr()
		}
		parts = append(parts, m+"="+addr)
	}
	return strings.Join(parts, ",")
}

// LogPath returns node n's log file.
func (c *Cluster) LogPath(n string) string { return filepath.Join(c.cfg.Dir, n+".log") }

// DataDir returns node n's data directory.
func (c *Cluster) DataDir(n string) string { return filepath.Join(c.cfg.Dir, n) }

// StartNode starts n (with its data, if it ran before). With gossip, every
// node gossips and has the others' gossip addresses as --join: for a node
// of the initial cluster they only seed gossip. A node that joined again
// after its data was wiped (Rejoin) starts as an operator would start a
// replacement: with --initial-cluster-state existing and --join instead
// of --initial-cluster, --join listing the others' gossip addresses (it
// joins the cluster gossip shows) or, without gossip, their client
// addresses; once it has state, keystored takes its peers from the log.
// The routes (--peer-route) are the same throughout.
func (c *Cluster) StartNode(n string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.procs[n] != nil {
		return nil
	}
	logf, err := os.OpenFile(c.LogPath(n), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	args := []string{
		"--name", n, "--data-dir", c.DataDir(n),
		"--client-addr", c.client[n], "--peer-addr", c.peer[n],
		"--peer-route", c.initialCluster(n), "--log-level", "info",
		"--test-clock-offset-file", c.clockFile(n),
	}
	var seeds, members []string
	for _, m := range others(c.Names, n) {
		seeds = append(seeds, c.gossip[m])
		members = append(members, c.client[m])
	}
	if c.gossip[n] != "" {
		args = append(args, "--gossip-addr", c.gossip[n])
	}
	switch {
	case c.joined[n]:
		join := members
		if c.gossip[n] != "" {
			join = seeds
		}
		args = append(args, "--join", strings.Join(join, ","), "--initial-cluster-state", "existing",
			"--advertise-peer-addr", c.peer[n], "--advertise-client-addr", c.client[n])
	case c.gossip[n] != "":
		args = append(args, "--initial-cluster", c.initialCluster(n), "--join", strings.Join(seeds, ","))
	default:
		args = append(args, "--initial-cluster", c.initialCluster(n))
	}
	args = append(args, c.cfg.Args...)
	if c.cfg.NodeArgs != nil {
		args = append(args, c.cfg.NodeArgs(n)...)
	}
	cmd := exec.Command(c.cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	c.procs[n] = p
	c.paused[n] = false
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(p.done)
	}()
	return nil
}

func (c *Cluster) clockFile(n string) string { return filepath.Join(c.cfg.Dir, n+".clock") }

// SetClockOffset skews n's wall clock by d (0 restores it), at once.
func (c *Cluster) SetClockOffset(n string, d time.Duration) error {
	return os.WriteFile(c.clockFile(n), []byte(d.String()), 0o644)
}

// Kill sends SIGKILL to n and waits until it is gone.
func (c *Cluster) Kill(n string) { c.signalAndReap(n, syscall.SIGKILL) }

// Terminate stops n gracefully (SIGTERM).
func (c *Cluster) Terminate(n string) { c.signalAndReap(n, syscall.SIGTERM) }

func (c *Cluster) signalAndReap(n string, sig syscall.Signal) {
	c.mu.Lock()
	p := c.procs[n]
	delete(c.procs, n)
	paused := c.paused[n]
	c.paused[n] = false
	c.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	if paused {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// WaitExit waits up to d for n's process to end by itself (as a removed
// node does) and then forgets it, so that StartNode starts n again. It
// returns the exit status (-1 for a death by signal) and whether the
// process ended in time; one that did not is left running.
func (c *Cluster) WaitExit(n string, d time.Duration) (code int, exited bool) {
	c.mu.Lock()
	p := c.procs[n]
	c.mu.Unlock()
	if p == nil {
		return 0, false
	}
	select {
	case <-p.done:
	case <-time.After(d):
		return 0, false
	}
	c.mu.Lock()
	if c.procs[n] == p {
		delete(c.procs, n)
		c.paused[n] = false
	}
	c.mu.Unlock()
	return p.cmd.ProcessState.ExitCode(), true
}

// Exited reports whether n's process was started and has ended by itself
// (not by Kill or Terminate, which forget it).
func (c *Cluster) Exited(n string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[n]
	return p != nil && p.exited()
}

// Rejoin replaces n as an operator replaces a node whose data is lost:
// its process must have ended and its member been removed; its data dir
// is wiped and it starts empty with --join (see StartNode), under the same
// name, addresses and routes, to join as a learner under a new Raft id.
func (c *Cluster) Rejoin(n string) error {
	c.mu.Lock()
	running := c.procs[n] != nil
	c.mu.Unlock()
	if running {
		return fmt.Errorf("harness: %s still runs; it cannot be wiped", n)
	}
	if err := os.RemoveAll(c.DataDir(n)); err != nil {
		return err
	}
	c.Note(n, "data dir wiped; starting it with --join to join again under a new id")
	c.mu.Lock()
	c.joined[n] = true
	c.mu.Unlock()
	return c.StartNode(n)
}

// Note appends a line from the harness to n's log, so that a reader sees
// where the harness changed the node's membership.
func (c *Cluster) Note(n, msg string) {
	f, err := os.OpenFile(c.LogPath(n), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "=== harness %s: %s\n", time.Now().Format("15:04:05.000"), msg)
}

// Pause stops n with SIGSTOP; Resume continues it.
func (c *Cluster) Pause(n string) { c.pauseSignal(n, syscall.SIGSTOP, true) }

// Resume continues a paused node.
func (c *Cluster) Resume(n string) { c.pauseSignal(n, syscall.SIGCONT, false) }

func (c *Cluster) pauseSignal(n string, sig syscall.Signal, paused bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.procs[n]; p != nil && c.paused[n] != paused {
		_ = p.cmd.Process.Signal(sig)
		c.paused[n] = paused
	}
}

// Running reports whether n's process is up (paused or not).
func (c *Cluster) Running(n string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[n] != nil
}

// Link returns the proxy carrying from's traffic to to.
func (c *Cluster) Link(from, to string) *faultproxy.Proxy { return c.proxy[[2]string{from, to}] }

// Isolate cuts every link into and out of n.
func (c *Cluster) Isolate(n string) {
	for _, m := range c.Names {
		if m != n {
			c.Link(n, m).Drop()
			c.Link(m, n).Drop()
		}
	}
}

// HealLinks makes every link pass again.
func (c *Cluster) HealLinks() {
	for _, p := range c.proxy {
		p.Pass()
	}
}

// Heal resumes paused nodes, starts dead ones and heals every link.
func (c *Cluster) Heal() error {
	c.HealLinks()
	for _, n := range c.Names {
		c.Resume(n)
		if err := c.SetClockOffset(n, 0); err != nil {
			return err
		}
		if err := c.StartNode(n); err != nil {
			return err
		}
	}
	return nil
}

// GossipAddr returns n's gossip address ("" without gossip).
func (c *Cluster) GossipAddr(n string) string { return c.gossip[n] }

// ClientAddr returns n's client address.
func (c *Cluster) ClientAddr(n string) string { return c.client[n] }

// KV returns a KeyStoreService client of n.
func (c *Cluster) KV(n string) keystorev1.KeyStoreServiceClient {
	return keystorev1.NewKeyStoreServiceClient(c.conns[n])
}

// Batch returns a BatchService client for node n.
func (c *Cluster) Batch(n string) keystorev1.BatchServiceClient {
	return keystorev1.NewBatchServiceClient(c.conns[n])
}

// Status asks n for its view.
func (c *Cluster) Status(ctx context.Context, n string) (*keystorev1.StatusResponse, error) {
	return keystorev1.NewClusterServiceClient(c.conns[n]).Status(ctx, &keystorev1.StatusRequest{})
}

// statusWithChecksum asks n for its view and its state checksum.
func (c *Cluster) statusWithChecksum(ctx context.Context, n string) (*keystorev1.StatusResponse, error) {
	return keystorev1.NewClusterServiceClient(c.conns[n]).Status(ctx, &keystorev1.StatusRequest{IncludeChecksum: true})
}

// Leader returns the leader as the first answering node sees it, or "".
func (c *Cluster) Leader(ctx context.Context) string {
	for _, n := range c.Names {
		actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		st, err := c.Status(actx, n)
		cancel()
		if err == nil && st.Leader != "" {
			return st.Leader
		}
	}
	return ""
}

// Term returns the highest Raft term any answering node reports (0 if none
// answers): over a run, its growth counts elections.
func (c *Cluster) Term(ctx context.Context) uint64 {
	var term uint64
	for _, n := range c.Names {
		actx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, err := c.Status(actx, n)
		cancel()
		if err == nil {
			term = max(term, st.Term)
		}
	}
	return term
}

// WaitServing waits until every node reports serving.
func (c *Cluster) WaitServing(ctx context.Context) error {
	for _, n := range c.Names {
		for {
			actx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			st, err := c.Status(actx, n)
			cancel()
			if err == nil && st.Serving {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s not serving: %v", n, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// SameState waits until every node reports the same state checksum at the
// same applied index (nodes apply idle ticks every second, so a few looks
// find them at one index).
func (c *Cluster) SameState(ctx context.Context) error {
	var last string
	for {
		sums := map[uint64]map[string]bool{}
		for _, n := range c.Names {
			actx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := c.statusWithChecksum(actx, n)
			cancel()
			if err != nil {
				last = fmt.Sprintf("%s: %v", n, err)
				break
			}
			if sums[st.StateAppliedIndex] == nil {
				sums[st.StateAppliedIndex] = map[string]bool{}
			}
			sums[st.StateAppliedIndex][string(st.StateChecksum)] = true
		}
		for index, set := range sums {
			if len(set) > 1 {
				return fmt.Errorf("state checksums differ at applied index %d", index)
			}
		}
		if len(sums) == 1 {
			for _, set := range sums {
				if len(set) == 1 {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes never reported one applied index together (%s)", last)
		case <-time.After(37 * time.Millisecond):
		}
	}
}

// Stop kills every node and closes the proxies and connections.
func (c *Cluster) Stop() {
	for _, n := range c.Names {
		c.Kill(n)
	}
	for _, p := range c.proxy {
		p.Close()
	}
	for _, conn := range c.conns {
		_ = conn.Close()
	}
}

// PeerAddr returns the address n's peer port listens on (not a proxy).
func (c *Cluster) PeerAddr(n string) string { return c.peer[n] }

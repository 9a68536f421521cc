package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ksCluster is three keystored processes on loopback, started, stopped and
// restarted by this program (the large-state benchmark). Every process it
// starts writes its pid to pidDir/<name>.pid while it runs, so that the
// calling script can kill it should this program die without doing so.
type ksCluster struct {
	bin     string
	dir     string // data directories and logs
	pidDir  string
	flags   []string // extra keystored flags, the same for every node
	initial string   // --initial-cluster: n1..n3
	nodes   []*ksNode
}

// ksNode is one member. Its process fields change on restart.
type ksNode struct {
	name       string
	clientAddr string
	peerAddr   string
	dataDir    string
	logPath    string
	// join, when set, starts the node with --join (these client
	// addresses) instead of --initial-cluster: a node added at runtime.
	join []string

	conn    *grpc.ClientConn // to clientAddr, redialled fast while the node is down
	cluster keystorev1.ClusterServiceClient
	health  healthpb.HealthClient

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	exitErr error
	stopped bool // stopped on purpose: an exit is not a crash
}

// newKSCluster describes (does not start) nodes n1..n3 with client ports
// clientBase.. and peer ports peerBase.., data under dir.
func newKSCluster(bin, dir, pidDir string, clientBase, peerBase int, flags []string) (*ksCluster, error) {
	c := &ksCluster{bin: bin, dir: dir, pidDir: pidDir, flags: flags}
	for _, d := range []string{dir, pidDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	var initial []string
	for i := range 3 {
		n, err := c.newNode(fmt.Sprintf("n%d", i+1), clientBase+i, peerBase+i)
		if err != nil {
			c.close()
			return nil, err
		}
		c.nodes = append(c.nodes, n)
		initial = append(initial, n.name+"="+n.peerAddr)
	}
	c.initial = strings.Join(initial, ",")
	return c, nil
}

// newNode describes a node of c (not added to c.nodes) on loopback.
func (c *ksCluster) newNode(name string, clientPort, peerPort int) (*ksNode, error) {
	n := &ksNode{
		name:       name,
		clientAddr: fmt.Sprintf("127.0.0.1:%d", clientPort),
		peerAddr:   fmt.Sprintf("127.0.0.1:%d", peerPort),
		dataDir:    filepath.Join(c.dir, name),
		logPath:    filepath.Join(c.dir, name+".log"),
	}
	// A short reconnect backoff: the restart timings poll a node that
	// is not listening yet, and gRPC's default (1s, growing) would
	// be measured instead of the node.
	conn, err := grpc.NewClient(n.clientAddr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.2, MaxDelay: 50 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return nil, err
	}
	n.conn = conn
	n.cluster = keystorev1.NewClusterServiceClient(conn)
	n.health = healthpb.NewHealthClient(conn)
	return n, nil
}

// addNode adds a node that joins the running cluster through the client
// addresses of the members now in c (it is not started).
func (c *ksCluster) addNode(name string, clientPort, peerPort int) (*ksNode, error) {
	n, err := c.newNode(name, clientPort, peerPort)
	if err != nil {
		return nil, err
	}
	n.join = c.endpoints()
	c.nodes = append(c.nodes, n)
	return n, nil
}

// dropNode takes a node that has exited out of c and closes its
// connection.
func (c *ksCluster) dropNode(n *ksNode) {
	c.nodes = slices.DeleteFunc(c.nodes, func(m *ksNode) bool { return m == n })
	if n.conn != nil {
		_ = n.conn.Close()
	}
}

func (c *ksCluster) endpoints() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.clientAddr
	}
	return out
}

// pids returns the pids of the running nodes.
func (c *ksCluster) pids() []int {
	var out []int
	for _, n := range c.nodes {
		if p := n.pid(); p > 0 {
			out = append(out, p)
		}
	}
	return out
}

func (n *ksNode) pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil || isClosed(n.done) {
		return 0
	}
	return n.cmd.Process.Pid
}

func isClosed(ch chan struct{}) bool {
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// startAll starts every node.
func (c *ksCluster) startAll() error {
	for _, n := range c.nodes {
		if err := c.start(n); err != nil {
			return err
		}
	}
	return nil
}

// start starts n's process, its output appended to n.logPath.
func (c *ksCluster) start(n *ksNode) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil && !isClosed(n.done) {
		return fmt.Errorf("%s is running", n.name)
	}
	args := []string{
		"--name", n.name, "--data-dir", n.dataDir,
		"--client-addr", n.clientAddr, "--peer-addr", n.peerAddr,
	}
	if len(n.join) > 0 {
		args = append(args, "--join", strings.Join(n.join, ","))
	} else {
		args = append(args, "--initial-cluster", c.initial)
	}
	args = append(append(args, "--log-level", "info", "--log-format", "json"), c.flags...)
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Should this program die, the kernel kills the node (the script's
	// trap kills it by its pid file too).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	pidFile := filepath.Join(c.pidDir, n.name+".pid")
	_ = os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	done := make(chan struct{})
	n.cmd, n.done, n.exitErr, n.stopped = cmd, done, nil, false
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.exitErr = err
		n.mu.Unlock()
		_ = os.Remove(pidFile)
		close(done)
	}()
	return nil
}

// stop sends SIGTERM and waits for the exit, SIGKILL after grace. It
// returns how long the process took to exit.
func (c *ksCluster) stop(n *ksNode, grace time.Duration) (time.Duration, error) {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.stopped = true
	n.mu.Unlock()
	if cmd == nil || isClosed(done) {
		return 0, nil
	}
	t0 := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return time.Since(t0), nil
	case <-time.After(grace):
	}
	_ = cmd.Process.Kill()
	<-done
	return time.Since(t0), fmt.Errorf("%s did not exit within %v of SIGTERM; killed", n.name, grace)
}

// kill sends SIGKILL to n and waits for the exit.
func (c *ksCluster) kill(n *ksNode) {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.stopped = true
	n.mu.Unlock()
	if cmd == nil || isClosed(done) {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// expectExit marks n's coming exit as wanted (not a crash): a member being
// removed stops by itself.
func (n *ksNode) expectExit() {
	n.mu.Lock()
	n.stopped = true
	n.mu.Unlock()
}

// exited returns the channel closed when n's process has exited, and its
// exit status then (-1: killed by a signal or not exited).
func (n *ksNode) exited() (<-chan struct{}, func() int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	cmd, done := n.cmd, n.done
	return done, func() int {
		if cmd == nil || cmd.ProcessState == nil || !isClosed(done) {
			return -1
		}
		return cmd.ProcessState.ExitCode()
	}
}

// stopAll stops every node (SIGTERM, then SIGKILL after grace).
func (c *ksCluster) stopAll(grace time.Duration) {
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = c.stop(n, grace)
		}()
	}
	wg.Wait()
}

// close stops every node and closes the connections.
func (c *ksCluster) close() {
	c.stopAll(10 * time.Second)
	for _, n := range c.nodes {
		if n.conn != nil {
			_ = n.conn.Close()
		}
	}
}

// checkAlive returns an error naming a node that exited although nobody
// stopped it, with the end of its log.
func (c *ksCluster) checkAlive() error {
	for _, n := range c.nodes {
		n.mu.Lock()
		crashed := n.cmd != nil && !n.stopped && isClosed(n.done)
		exitErr := n.exitErr
		n.mu.Unlock()
		if crashed {
			return fmt.Errorf("%s exited unexpectedly (%v); end of %s:\n%s", n.name, exitErr, n.logPath, logTail(n.logPath, 15))
		}
	}
	return nil
}

// logTail returns the last lines of a file.
func logTail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

// status asks n for its view (with the state checksum if asked).
func (n *ksNode) status(ctx context.Context, timeout time.Duration, checksum bool) (*keystorev1.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return n.cluster.Status(ctx, &keystorev1.StatusRequest{IncludeChecksum: checksum})
}

// leader waits until a node reports itself the leader and returns it.
func (c *ksCluster) leader(ctx context.Context, timeout time.Duration) (*ksNode, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		for _, n := range c.nodes {
			if n.pid() == 0 {
				continue
			}
			st, err := n.status(ctx, time.Second, false)
			if err != nil {
				last = err
				continue
			}
			if st.GetLeader() != "" && st.GetLeader() == st.GetName() {
				return n, nil
			}
		}
		if err := c.checkAlive(); err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no leader within %v (last error: %v)", timeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// follower returns a running node other than leader.
func (c *ksCluster) follower(leader *ksNode) *ksNode {
	for _, n := range c.nodes {
		if n != leader && n.pid() > 0 {
			return n
		}
	}
	return nil
}

// waitServing polls n's gRPC health (service "") every 10 ms until it says
// SERVING. It returns the time from since until the first answer of any
// kind (the node listens) and until SERVING.
func (n *ksNode) waitServing(ctx context.Context, since time.Time, timeout time.Duration) (listen, serving time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	listen = -1
	for {
		actx, acancel := context.WithTimeout(ctx, 500*time.Millisecond)
		resp, herr := n.health.Check(actx, &healthpb.HealthCheckRequest{Service: ""})
		acancel()
		now := time.Since(since)
		if herr == nil {
			if listen < 0 {
				listen = now
			}
			if resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				return listen, now, nil
			}
		}
		n.mu.Lock()
		dead := isClosed(n.done)
		n.mu.Unlock()
		if dead {
			return listen, 0, fmt.Errorf("%s exited while starting; end of its log:\n%s", n.name, logTail(n.logPath, 15))
		}
		select {
		case <-ctx.Done():
			return listen, 0, fmt.Errorf("%s not SERVING within %v (last: %v)", n.name, timeout, herr)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// sameState waits until every running node reports the same state checksum
// at the same applied index (nodes apply idle ticks every second, so a few
// looks find them at one index). It returns that index; checksums that
// differ at one index are an error at once.
func (c *ksCluster) sameState(ctx context.Context, timeout time.Duration) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		var (
			wg  sync.WaitGroup
			sts = make([]*keystorev1.StatusResponse, len(c.nodes))
			ers = make([]error, len(c.nodes))
		)
		for i, n := range c.nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sts[i], ers[i] = n.status(ctx, time.Minute, true)
			}()
		}
		wg.Wait()
		sums := map[uint64]map[string][]string{}
		for i, st := range sts {
			if ers[i] != nil {
				last = fmt.Sprintf("%s: %v", c.nodes[i].name, ers[i])
				continue
			}
			if len(st.GetStateChecksum()) == 0 {
				last = fmt.Sprintf("%s: no checksum in its answer", c.nodes[i].name)
				continue
			}
			idx := st.GetStateAppliedIndex()
			if sums[idx] == nil {
				sums[idx] = map[string][]string{}
			}
			sums[idx][string(st.GetStateChecksum())] = append(sums[idx][string(st.GetStateChecksum())], st.GetName())
		}
		for idx, set := range sums {
			if len(set) > 1 {
				var parts []string
				for sum, names := range set {
					parts = append(parts, fmt.Sprintf("%v: %x", names, sum[:8]))
				}
				return idx, fmt.Errorf("state checksums differ at applied index %d: %s", idx, strings.Join(parts, "; "))
			}
		}
		if len(sums) == 1 {
			for idx, set := range sums {
				for _, names := range set {
					if len(names) == len(c.nodes) {
						return idx, nil
					}
				}
			}
		}
		if len(sums) > 1 {
			last = fmt.Sprintf("answers at %d different applied indexes", len(sums))
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("nodes never reported one applied index together within %v (%s)", timeout, last)
		case <-time.After(37 * time.Millisecond):
		}
	}
}

// readRSS returns VmRSS of pid in bytes.
func readRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseVmRSS(bufio.NewScanner(f))
}

func parseVmRSS(sc *bufio.Scanner) (int64, error) {
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "VmRSS:") {
			continue
		}
		f := strings.Fields(strings.TrimPrefix(line, "VmRSS:"))
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected VmRSS line %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected VmRSS line %q", line)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmRSS line")
}

// rssSampler reads the VmRSS of every running node every interval and keeps
// each node's peak (by name: a restarted node's new process counts under
// the same name).
type rssSampler struct {
	c       *ksCluster
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	peak    map[string]int64
	samples int
}

func startRSSSampler(c *ksCluster, interval time.Duration) *rssSampler {
	s := &rssSampler{c: c, stop: make(chan struct{}), done: make(chan struct{}), peak: map[string]int64{}}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) sample() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++
	for _, n := range s.c.nodes {
		pid := n.pid()
		if pid == 0 {
			continue
		}
		if rss, err := readRSS(pid); err == nil && rss > s.peak[n.name] {
			s.peak[n.name] = rss
		}
	}
}

// finish stops sampling (one last sample first) and returns the peaks.
func (s *rssSampler) finish() (map[string]int64, int) {
	close(s.stop)
	<-s.done
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.samples
}

// rssNow returns the current VmRSS of every running node by name.
func (c *ksCluster) rssNow() map[string]int64 {
	out := map[string]int64{}
	for _, n := range c.nodes {
		if pid := n.pid(); pid > 0 {
			if rss, err := readRSS(pid); err == nil {
				out[n.name] = rss
			}
		}
	}
	return out
}

// dirBytes sums the sizes of the regular files under dir whose names end
// in suffix ("": all).
func dirBytes(dir, suffix string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() && strings.HasSuffix(d.Name(), suffix) {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

// logSize returns the current size of a node's log, where the lines of the
// next step begin.
func (n *ksNode) logSize() int64 {
	info, err := os.Stat(n.logPath)
	if err != nil {
		return 0
	}
	return info.Size()
}

package clustertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// dockerCluster is three keystored containers, built from the repository's
// Dockerfile, on a private Docker network of their own, started exactly as
// docker-compose.yml starts them: no member list, each gossips on 7201 with
// the other two's gossip addresses (by network alias, through Docker's DNS)
// as --join, and --bootstrap-expect 3 makes the three one cluster; members
// advertise their aliases (nX:7101, nX:7001). The test reaches each one
// through its client port, published on a random 127.0.0.1 port, with
// discovery off: the advertised client addresses resolve only on the
// network.
//
// Every name it creates carries a random suffix and the label keystore-test,
// and t.Cleanup removes containers (with their volumes), network and image
// even when the test fails.
type dockerCluster struct {
	t       *testing.T
	id      string // the random suffix
	image   string
	network string
	names   []string
	// addr is each node's published client address. NB: Docker picks a new
	// host port whenever the container starts again or rejoins the network,
	// so refreshAddr reads it after every such event.
	addr map[string]string
}

const (
	dockerLabel = "keystore-test"
	// dockerWait bounds every wait of the test for a node to become healthy
	// or to show a record: generous for a loaded machine, well under the
	// test's 90 s budget.
	dockerWait = 45 * time.Second
)

// TestDockerCluster runs keystored as containers, bootstrapped by gossip
// (--bootstrap-expect 3) as docker-compose.yml does: the three form one
// cluster; then the faults a container platform produces: kill -9 of the
// leader's container, the leader cut off the network, the leader frozen by
// docker pause. Each time the other two serve a Claim within 5 s, and the
// faulted node, once back, serves linearizable reads of what was written
// without it. Then a fourth container, given one member's gossip address
// as --join and no member list, joins as a voter, and gossip finds all four
// alive.
func TestDockerCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image and runs containers")
	}
	if out, err := dockerOutput(10*time.Second, "info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Skipf("no Docker engine (docker info: %v): %s", err, out)
	}
	d := newDockerCluster(t)
	d.waitServing(d.names...)
	d.waitMembers(d.names...)
	d.claimWithin(10*time.Second, "before", d.names...)

	// kill -9 of the leader's container.
	lead := d.leader()
	d.docker("kill", d.container(lead))
	d.claimWithin(5*time.Second, "after-kill", d.others(lead)...)
	d.docker("wait", d.container(lead))
	began := time.Now()
	d.docker("start", d.container(lead))
	d.refreshAddr(lead)
	d.waitServing(lead)
	d.assertCompleted(lead, "before", "after-kill")
	t.Logf("%s caught up %s after docker start", lead, time.Since(began).Round(time.Millisecond))

	// The leader loses its network; the alias goes with the endpoint, so
	// reconnecting names it again.
	lead = d.leader()
	d.docker("network", "disconnect", d.network, d.container(lead))
	d.claimWithin(5*time.Second, "during-partition", d.others(lead)...)
	began = time.Now()
	d.docker("network", "connect", "--alias", lead, d.network, d.container(lead))
	d.refreshAddr(lead)
	d.waitServing(lead)
	d.assertCompleted(lead, "during-partition")
	t.Logf("%s caught up %s after network connect", lead, time.Since(began).Round(time.Millisecond))

	// The leader is frozen (SIGSTOP-like: its sockets stay open, nothing
	// answers) and thawed.
	lead = d.leader()
	d.docker("pause", d.container(lead))
	d.claimWithin(5*time.Second, "during-pause", d.others(lead)...)
	began = time.Now()
	d.docker("unpause", d.container(lead))
	d.waitServing(lead)
	d.assertCompleted(lead, "during-pause")
	t.Logf("%s caught up %s after unpause", lead, time.Since(began).Round(time.Millisecond))

	// Everything written is on every node.
	for _, n := range d.names {
		d.assertCompleted(n, "before", "after-kill", "during-partition", "during-pause")
	}

	// A fourth node finds the cluster by gossip and joins it as a voter.
	began = time.Now()
	d.start("n4", "--join", "n1:7201")
	d.names = append(d.names, "n4")
	d.waitMembers(d.names...)
	d.waitServing("n4")
	d.assertCompleted("n4", "before", "after-kill", "during-partition", "during-pause")
	t.Logf("n4 joined by gossip, a voter and serving %s after docker run", time.Since(began).Round(time.Millisecond))
	d.claimWithin(5*time.Second, "after-join", "n4")
}

func newDockerCluster(t *testing.T) *dockerCluster {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(b[:])
	d := &dockerCluster{
		t: t, id: id, image: "keystore-test:" + id, network: "keystore-test-" + id,
		names: []string{"n1", "n2", "n3"}, addr: map[string]string{},
	}

	// The image: the repository's Dockerfile over a context holding only
	// the static binary, as `make build` would leave it in bin/.
	buildCtx := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(buildCtx, "bin", "keystored"), "github.com/keystore-dev/keystore/cmd/keystored")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build static keystored: %v\n%s", err, out)
	}
	if err := os.Mkdir(filepath.Join(buildCtx, "bin", "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	dockerfile, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(buildCtx, "Dockerfile"), dockerfile, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = dockerOutput(time.Minute, "rmi", "-f", d.image) })
	if out, err := dockerOutput(2*time.Minute, "build", "-q", "--label", dockerLabel+"="+id, "-t", d.image, buildCtx); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	// keystored runs unprivileged in its container (and its files are
	// private to that user: cmd/keystored's lifecycle test).
	if out, err := dockerOutput(time.Minute, "image", "inspect", "--format", "{{.Config.User}}", d.image); err != nil || strings.TrimSpace(out) != "65532:65532" {
		t.Fatalf("image user: %q, %v; want 65532:65532 (not root)", out, err)
	}

	t.Cleanup(func() { _, _ = dockerOutput(time.Minute, "network", "rm", d.network) })
	d.docker("network", "create", "--label", dockerLabel+"="+id, d.network)

	for _, n := range d.names {
		var seeds []string
		for _, m := range d.others(n) {
			seeds = append(seeds, m+":7201")
		}
		d.start(n, "--join", strings.Join(seeds, ","), "--bootstrap-expect", "3")
	}
	return d
}

// start runs node n's container as docker-compose.yml does (addresses by
// alias, gossip on 7201), with extra flags (--join, --bootstrap-expect).
func (d *dockerCluster) start(n string, extra ...string) {
	d.t.Helper()
	d.t.Cleanup(func() { d.remove(n) })
	args := []string{"run", "-d", "--name", d.container(n), "--label", dockerLabel + "=" + d.id,
		"--network", d.network, "--network-alias", n, "-p", "127.0.0.1::7001", d.image,
		"--name", n, "--data-dir", "/data", "--client-addr", "0.0.0.0:7001", "--peer-addr", "0.0.0.0:7101",
		"--advertise-client-addr", n + ":7001", "--advertise-peer-addr", n + ":7101", "--gossip-addr", "0.0.0.0:7201"}
	d.docker(append(args, extra...)...)
	d.refreshAddr(n)
}

// waitMembers waits until every named node lists exactly the named nodes,
// all voters, in one cluster (the same id everywhere), and finds each alive
// in gossip.
func (d *dockerCluster) waitMembers(names ...string) {
	d.t.Helper()
	want := strings.Join(names, " ")
	deadline := time.Now().Add(dockerWait)
	for {
		err := func() error {
			cluster := ""
			for _, n := range names {
				conn, err := grpc.NewClient(d.addr[n], grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				resp, err := keystorev1.NewClusterServiceClient(conn).MemberList(ctx, &keystorev1.MemberListRequest{})
				cancel()
				_ = conn.Close()
				if err != nil {
					return fmt.Errorf("%s: %v", n, err)
				}
				var got []string
				for _, m := range resp.GetMembers() {
					s := m.GetName()
					if m.GetIsLearner() {
						s += "(learner)"
					}
					if m.GetGossipState() != "alive" {
						s += "(gossip: " + m.GetGossipState() + ")"
					}
					got = append(got, s)
				}
				sort.Strings(got)
				if strings.Join(got, " ") != want {
					return fmt.Errorf("%s lists %v; want voters %s, alive in gossip", n, got, want)
				}
				if cluster != "" && resp.GetClusterId() != cluster {
					d.t.Fatalf("two clusters: %s is in %s, %s in %s", names[0], cluster, n, resp.GetClusterId())
				}
				cluster = resp.GetClusterId()
			}
			return nil
		}()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("members not settled after %s: %v", dockerWait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// remove shows a failed test the container's log, then removes the
// container and its anonymous /data volume.
func (d *dockerCluster) remove(n string) {
	c := d.container(n)
	if d.t.Failed() {
		out, _ := dockerOutput(10*time.Second, "logs", "--tail", "40", c)
		d.t.Logf("last log lines of %s:\n%s", n, out)
	}
	_, _ = dockerOutput(30*time.Second, "unpause", c) // rm -f refuses a paused container on older engines
	if out, err := dockerOutput(time.Minute, "rm", "-f", "-v", c); err != nil {
		d.t.Logf("docker rm %s: %v: %s", c, err, out)
	}
}

func (d *dockerCluster) container(n string) string { return d.network + "-" + n }

// others is every member but n.
func (d *dockerCluster) others(n string) []string {
	var out []string
	for _, m := range d.names {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

// docker runs a docker command that must succeed within 30 s.
func (d *dockerCluster) docker(args ...string) string {
	d.t.Helper()
	out, err := dockerOutput(30*time.Second, args...)
	if err != nil {
		d.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// dockerOutput runs docker with args, killed after timeout, and returns its
// combined output, trimmed.
func dockerOutput(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	return strings.TrimSpace(out.String()), err
}

// refreshAddr reads the host port Docker published n's client port on.
func (d *dockerCluster) refreshAddr(n string) {
	d.t.Helper()
	out := d.docker("port", d.container(n), "7001/tcp")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "127.0.0.1:") {
			d.addr[n] = strings.TrimSpace(line)
			return
		}
	}
	d.t.Fatalf("docker port %s: got %q; want a 127.0.0.1 binding", n, out)
}

// client talks to the named nodes only, trying each briefly, so that a
// node under a fault cannot hold a call for the client's default 6 s.
func (d *dockerCluster) client(names ...string) *client.Client {
	d.t.Helper()
	var eps []string
	for _, n := range names {
		eps = append(eps, d.addr[n])
	}
	// NoDiscovery: the members advertise their aliases, which resolve on
	// the Docker network only.
	c, err := client.New(context.Background(), client.Config{
		Endpoints: eps, AttemptTimeout: time.Second, MaxAttempts: 1000, BackoffMax: 200 * time.Millisecond,
		NoDiscovery: true,
	})
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitServing waits until each node's gRPC health says SERVING (it has a
// leader and has caught up).
func (d *dockerCluster) waitServing(names ...string) {
	d.t.Helper()
	deadline := time.Now().Add(dockerWait)
	for _, n := range names {
		conn, err := grpc.NewClient(d.addr[n], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			d.t.Fatal(err)
		}
		hc := healthpb.NewHealthClient(conn)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			cancel()
			if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
				break
			}
			if time.Now().After(deadline) {
				_ = conn.Close()
				d.t.Fatalf("%s not serving after %s: %v %v", n, dockerWait, resp, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = conn.Close()
	}
}

// leader is the member every node agrees leads.
func (d *dockerCluster) leader() string {
	d.t.Helper()
	c := d.client(d.names...)
	deadline := time.Now().Add(dockerWait)
	for {
		var lead string
		agreed := true
		for _, st := range c.Status(context.Background()) {
			if st.Err != nil || st.Status.GetLeader() == "" || (lead != "" && st.Status.GetLeader() != lead) {
				agreed = false
				break
			}
			lead = st.Status.GetLeader()
		}
		if agreed {
			return lead
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no leader all three agree on after %s", dockerWait)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// claimWithin claims key through the named nodes and requires the claim to
// be acquired within limit of the call (the fault was just injected), then
// completes it with a response naming the key.
func (d *dockerCluster) claimWithin(limit time.Duration, key string, names ...string) {
	d.t.Helper()
	c := d.client(names...)
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	cl, err := c.Claim(ctx, client.ClaimRequest{Namespace: "docker", Key: key, Owner: "docker-test"})
	cancel()
	if err != nil {
		d.t.Fatalf("claim %s through %v: no answer within %s: %v", key, names, limit, err)
	}
	if cl.Outcome != client.Acquired {
		d.t.Fatalf("claim %s: got %v; want ACQUIRED", key, cl.Outcome)
	}
	d.t.Logf("claim %s served by %v in %s", key, names, time.Since(began).Round(time.Millisecond))
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp := client.Response{Code: 201, Body: []byte("done " + key)}
	if _, err := c.Complete(ctx, client.CompleteRequest{Namespace: "docker", Key: key, Token: cl.Token, Response: resp}); err != nil {
		d.t.Fatalf("complete %s: %v", key, err)
	}
}

// assertCompleted reads each key through n alone, linearizably, until it
// shows the completed response claimWithin stored: n has caught up.
func (d *dockerCluster) assertCompleted(n string, keys ...string) {
	d.t.Helper()
	c := d.client(n)
	deadline := time.Now().Add(dockerWait)
	for _, key := range keys {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			rec, err := c.Get(ctx, "docker", key)
			cancel()
			if err == nil {
				if rec.State != client.StateCompleted || rec.Response == nil || string(rec.Response.Body) != "done "+key {
					d.t.Fatalf("get %s on %s: got %v %+v; want COMPLETED with body %q", key, n, rec.State, rec.Response, "done "+key)
				}
				break
			}
			if time.Now().After(deadline) || errors.Is(err, client.ErrNotFound) {
				d.t.Fatalf("get %s on %s: %v", key, n, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

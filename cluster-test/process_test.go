package clustertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// procCluster is three keystored processes on loopback.
type procCluster struct {
	t       *testing.T
	bin     string
	names   []string
	cluster string
	client  map[string]string
	peer    map[string]string
	dir     map[string]string
	cmd     map[string]*exec.Cmd
	conns   map[string]*grpc.ClientConn
}

// buildKeystored returns keystored built from this tree, once per test
// process (the process tests all run the same binary; TestMain removes it).
func buildKeystored(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "keystore-cluster-test-")
		if err != nil {
			built.err = err
			return
		}
		built.dir = dir
		bin := filepath.Join(dir, "keystored")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/keystore-dev/keystore/cmd/keystored").CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("%v\n%s", err, out)
			return
		}
		built.bin = bin
	})
	if built.err != nil {
		t.Fatalf("build keystored: %v", built.err)
	}
	return built.bin
}

// built is the keystored buildKeystored made.
var built struct {
	once     sync.Once
	dir, bin string
	err      error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func newProcCluster(t *testing.T) *procCluster {
	t.Helper()
	return startProcCluster(t, buildKeystored(t))
}

// startProcCluster starts n1-n3 of binary bin as one cluster, stopped (and,
// if the test failed, their logs' tails shown) when the test ends.
func startProcCluster(t *testing.T, bin string) *procCluster {
	t.Helper()
	c := &procCluster{
		t: t, bin: bin, names: []string{"n1", "n2", "n3"},
		client: map[string]string{}, peer: map[string]string{}, dir: map[string]string{},
		cmd: map[string]*exec.Cmd{}, conns: map[string]*grpc.ClientConn{},
	}
	var parts []string
	root := t.TempDir()
	for _, n := range c.names {
		c.client[n], c.peer[n], c.dir[n] = freePort(t), freePort(t), filepath.Join(root, n)
		parts = append(parts, n+"="+c.peer[n])
	}
	c.cluster = strings.Join(parts, ",")
	for _, n := range c.names {
		c.start(n)
		conn, err := grpc.NewClient(c.client[n], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		c.conns[n] = conn
	}
	t.Cleanup(func() {
		for _, n := range c.names {
			c.signal(n, syscall.SIGTERM)
			_ = c.conns[n].Close()
		}
		if t.Failed() {
			for _, n := range c.names {
				if b, err := os.ReadFile(c.dir[n] + ".log"); err == nil {
					t.Logf("log of %s (last 4 KiB):\n%s", n, tail(b, 4<<10))
				}
			}
		}
	})
	return c
}

func (c *procCluster) start(n string) {
	c.t.Helper()
	logf, err := os.OpenFile(c.dir[n]+".log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "--name", n, "--data-dir", c.dir[n],
		"--client-addr", c.client[n], "--peer-addr", c.peer[n], "--initial-cluster", c.cluster)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.cmd[n] = cmd
	go func() { _ = cmd.Wait(); _ = logf.Close() }()
}

// signal sends sig to n and, for a kill, waits until it is gone.
func (c *procCluster) signal(n string, sig syscall.Signal) {
	cmd := c.cmd[n]
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	deadline := time.Now().Add(10 * time.Second)
	for cmd.Process.Signal(syscall.Signal(0)) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	delete(c.cmd, n)
}

func (c *procCluster) kv(n string) keystorev1.KeyStoreServiceClient {
	return keystorev1.NewKeyStoreServiceClient(c.conns[n])
}

func (c *procCluster) waitServing(names ...string) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range names {
		hc := healthpb.NewHealthClient(c.conns[n])
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			cancel()
			if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("%s not serving: %v %v (log %s.log)", n, resp, err, c.dir[n])
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func complete(t *testing.T, kv keystorev1.KeyStoreServiceClient, key string) *keystorev1.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "e2e", Key: key})
	if err != nil || cl.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
		t.Fatalf("claim %s: %v %v", key, cl, err)
	}
	resp := &keystorev1.Response{Code: 200, Body: []byte("charged " + key)}
	if _, err := kv.Complete(ctx, &keystorev1.CompleteRequest{Namespace: "e2e", Key: key, Token: cl.Token, Response: resp}); err != nil {
		t.Fatalf("complete %s: %v", key, err)
	}
	return resp
}

func assertReplay(t *testing.T, kv keystorev1.KeyStoreServiceClient, key string, want *keystorev1.Response) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "e2e", Key: key})
	if err != nil {
		t.Fatalf("claim %s: %v", key, err)
	}
	if got.Outcome != keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED || !proto.Equal(got.Record.Response, want) {
		t.Fatalf("claim %s: got %v %v; want COMPLETED replay of %v", key, got.Outcome, got.Record.GetResponse(), want)
	}
}

// TestProcessKill9 runs real keystored processes: kill -9 of any one node
// leaves the other two serving, the killed node rejoins with its data, and
// completed records survive kill -9 of all three.
func TestProcessKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	c := newProcCluster(t)
	c.waitServing(c.names...)
	want := map[string]*keystorev1.Response{}
	for i, n := range c.names {
		key := fmt.Sprintf("before-%d", i)
		want[key] = complete(t, c.kv(n), key)
	}

	// One node down: the other two keep serving, writes and reads.
	c.signal("n2", syscall.SIGKILL)
	began := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.kv("n1").Get(ctx, &keystorev1.GetRequest{Namespace: "e2e", Key: "before-0"})
		cancel()
		if err == nil {
			break
		}
		if time.Since(began) > 5*time.Second {
			t.Fatalf("no linearizable read 5s after kill -9 of one node: %v", err)
		}
	}
	want["during"] = complete(t, c.kv("n3"), "during")

	// It comes back with its data and catches up.
	c.start("n2")
	c.waitServing("n2")
	for key, resp := range want {
		assertReplay(t, c.kv("n2"), key, resp)
	}

	// All three die at once; acknowledged completions survive.
	for _, n := range c.names {
		c.signal(n, syscall.SIGKILL)
	}
	for _, n := range c.names {
		c.start(n)
	}
	c.waitServing(c.names...)
	for key, resp := range want {
		assertReplay(t, c.kv("n1"), key, resp)
	}
}

package clustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/entry"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// upgradeFrom is the commit the rolling-upgrade test starts from: the last
// one before cluster versions (its binary supports cluster version 1 and
// storage format 1, and says nothing of cluster versions in Hello or
// Status). It is on main, so any full clone has it.
const upgradeFrom = "dddb97950dd8f13dc647806aa09bd29bbdceb976"

// buildKeystoredAt builds keystored as of commit in a temporary git
// worktree (removed once built), skipping the test when git or the commit
// is not available (a source tarball, a shallow clone).
func buildKeystoredAt(t *testing.T, commit string) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not available: cannot build the older keystored")
	}
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("not in a git checkout: cannot build the older keystored: %v", err)
	}
	repo := strings.TrimSpace(string(top))
	full, err := exec.Command("git", "-C", repo, "rev-parse", "--verify", "--quiet", commit+"^{commit}").Output()
	if err != nil {
		t.Skipf("commit %s is not in this clone (a shallow one?): cannot build the older keystored", commit)
	}
	sha := strings.TrimSpace(string(full))
	wt, err := os.MkdirTemp("", "keystore-upgrade-"+sha[:10]+"-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(wt) // git worktree add makes it
	if out, err := exec.Command("git", "-C", repo, "worktree", "add", "--detach", wt, sha).CombinedOutput(); err != nil {
		t.Fatalf("git worktree add %s: %v\n%s", sha, err, out)
	}
	defer func() {
		if out, err := exec.Command("git", "-C", repo, "worktree", "remove", "--force", wt).CombinedOutput(); err != nil {
			t.Errorf("git worktree remove %s: %v\n%s", wt, err, out)
			_ = os.RemoveAll(wt)
			_ = exec.Command("git", "-C", repo, "worktree", "prune").Run()
		}
	}()
	bin := filepath.Join(t.TempDir(), "keystored-"+sha[:10])
	build := exec.Command("go", "build", "-o", bin, "./cmd/keystored")
	build.Dir = wt
	build.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build keystored at %s: %v\n%s", sha, err, out)
	}
	return bin
}

// clusterVersions returns each node's Status.cluster_version (0: a
// keystored from before cluster versions, which runs version 1), or an
// error if a node did not answer.
func (c *procCluster) clusterVersions() (map[string]uint32, error) {
	out := make(map[string]uint32)
	for _, n := range c.names {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := keystorev1.NewClusterServiceClient(c.conns[n]).Status(ctx, &keystorev1.StatusRequest{})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("status of %s: %w", n, err)
		}
		out[n] = st.GetClusterVersion()
	}
	return out, nil
}

// upgradeWriter claims and completes fresh keys through the Go client
// until stopped, recording the response of every Complete the cluster
// acknowledged.
type upgradeWriter struct {
	mu    sync.Mutex
	acked map[string][]byte // key → the response body stored
	tried int
	stop  chan struct{}
	done  chan struct{}
}

func startUpgradeWriter(t *testing.T, c *client.Client) *upgradeWriter {
	w := &upgradeWriter{acked: map[string][]byte{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			key := fmt.Sprintf("k-%06d", i)
			body := []byte(fmt.Sprintf("response of %s: %x", key, i*7919))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			cl, err := c.Claim(ctx, client.ClaimRequest{Namespace: "upgrade", Key: key, Lease: time.Minute})
			if err == nil && cl.Outcome == client.Acquired {
				_, err = c.Complete(ctx, client.CompleteRequest{Namespace: "upgrade", Key: key, Token: cl.Token,
					Response: client.Response{Code: 201, Metadata: map[string]string{"key": key}, Body: body}})
				if err == nil {
					w.mu.Lock()
					w.acked[key] = body
					w.mu.Unlock()
				}
			}
			cancel()
			w.mu.Lock()
			w.tried++
			w.mu.Unlock()
			if err != nil {
				time.Sleep(20 * time.Millisecond) // a node restarting: the client retries elsewhere
			}
		}
	}()
	return w
}

func (w *upgradeWriter) halt() (acked map[string][]byte, tried int) {
	close(w.stop)
	<-w.done
	return w.acked, w.tried
}

func (w *upgradeWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// TestRollingUpgrade upgrades a running three-node cluster node by node
// from the keystored of upgradeFrom (before cluster versions) to this one
// while a client writes: each node is stopped (SIGTERM) and restarted on
// the same data dir and addresses with the new binary. While any node runs
// the old binary the cluster version stays 1 (the leader asks every
// member; the old one says nothing, meaning 1); once all three run the new
// one it rises to 2 within seconds. Every Complete acknowledged during the
// upgrade replays its exact response afterwards. Last, a downgrade: the
// old binary started on an upgraded data dir refuses to start (the store
// was raised to format 2 when it applied cluster version 2, a format the
// old binary does not read), and the node comes back with the new one.
func TestRollingUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two keystored binaries and runs real processes")
	}
	oldBin := buildKeystoredAt(t, upgradeFrom)
	newBin := buildKeystored(t)
	began := time.Now()

	c := startProcCluster(t, oldBin)
	c.waitServing(c.names...)

	var eps []string
	for _, n := range c.names {
		eps = append(eps, c.client[n])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	cl, err := client.New(ctx, client.Config{Endpoints: eps})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	w := startUpgradeWriter(t, cl)
	defer func() {
		select {
		case <-w.done:
		default:
			w.halt()
		}
	}()
	waitProgress := func(what string) {
		t.Helper()
		from := w.count()
		waitFor(t, 15*time.Second, "writes acknowledged "+what, func() error {
			if n := w.count(); n < from+20 {
				return fmt.Errorf("%d acknowledged since", n-from)
			}
			return nil
		})
	}
	waitProgress("on the old cluster")

	var restarted time.Time
	for i, n := range c.names {
		c.signal(n, syscall.SIGTERM)
		c.bin = newBin
		c.start(n)
		restarted = time.Now()
		c.waitServing(c.names...)
		waitProgress(fmt.Sprintf("after upgrading %s", n))
		if i == len(c.names)-1 {
			break
		}
		// Mixed: the leader (old or new) must not raise the version while
		// an old binary is a member. The new nodes check every 3 s; give
		// them more than one check.
		deadline := time.Now().Add(4 * time.Second)
		for time.Now().Before(deadline) {
			vs, err := c.clusterVersions()
			if err != nil {
				t.Fatal(err)
			}
			for m, v := range vs {
				if v > 1 {
					t.Fatalf("after upgrading %d of 3 nodes: %s reports cluster version %d; want 1 while an old binary is a member", i+1, m, v)
				}
			}
			time.Sleep(250 * time.Millisecond)
		}
	}

	// All three new: it rises to 2 on every node within a few seconds of
	// the last restart (a check every 3 s).
	waitFor(t, 10*time.Second-time.Since(restarted), "cluster version 2 on every node", func() error {
		vs, err := c.clusterVersions()
		if err != nil {
			return err
		}
		for m, v := range vs {
			if v != entry.ClusterVersion {
				return fmt.Errorf("%s at cluster version %d", m, v)
			}
		}
		return nil
	})
	t.Logf("cluster version %d on every node at most %v after the last node restarted", entry.ClusterVersion, time.Since(restarted).Round(10*time.Millisecond))
	waitProgress("at cluster version 2")
	acked, tried := w.halt()
	t.Logf("writer: %d Completes acknowledged of %d attempts during the upgrade", len(acked), tried)

	// Downgrade: the old binary on an upgraded data dir must refuse.
	down := "n1"
	c.signal(down, syscall.SIGTERM)
	c.waitServing("n2", "n3")
	var out bytes.Buffer
	old := exec.Command(oldBin, "--name", down, "--data-dir", c.dir[down],
		"--client-addr", c.client[down], "--peer-addr", c.peer[down], "--initial-cluster", c.cluster)
	old.Stdout, old.Stderr = &out, &out
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- old.Wait() }()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !strings.Contains(out.String(), "newer keystore") || !strings.Contains(out.String(), "format 2") {
			t.Fatalf("the old keystored on an upgraded data dir: exit %v; want a refusal naming format 2; output:\n%s", err, out.String())
		}
		t.Logf("downgrade refused as it should be: %s", lastLine(out.String()))
	case <-time.After(15 * time.Second):
		_ = old.Process.Kill()
		<-exited
		t.Fatalf("the old keystored kept running on an upgraded data dir; output:\n%s", out.String())
	}
	c.start(down)
	c.waitServing(c.names...)

	// Nothing acknowledged was lost: every Complete replays its exact
	// response, through every node.
	for i, n := range c.names {
		kv := c.kv(n)
		j := 0
		for key, body := range acked {
			if j++; j%len(c.names) != i {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			got, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "upgrade", Key: key})
			cancel()
			if err != nil {
				t.Fatalf("claim %s on %s: %v", key, n, err)
			}
			r := got.GetRecord().GetResponse()
			if got.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED || r.GetCode() != 201 ||
				!bytes.Equal(r.GetBody(), body) || r.GetMetadata()["key"] != key {
				t.Fatalf("claim %s on %s: %v %v; want the COMPLETED replay of %q", key, n, got.GetOutcome(), r, body)
			}
		}
	}
	if len(acked) < 100 {
		t.Fatalf("only %d writes acknowledged during the upgrade; want a real load", len(acked))
	}
	t.Logf("upgrade, downgrade refusal and checks took %v (builds excluded)", time.Since(began).Round(100*time.Millisecond))
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

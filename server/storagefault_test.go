package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// Storage faults, injected with Pebble's vfs/errorfs into one node of a
// real three-node cluster while clients write through all three. For every
// fault the failing node must stop serving (health NOT_SERVING, Status not
// Healthy) or, where the storage layer copes (a failed rename of a spare
// log segment), go on serving; it must never panic; every write any node
// acknowledged must be readable afterwards; the other two must go on
// serving writes; and the failing node, restarted on a good disk, must
// rejoin and reach the others' state (equal checksums). A node whose storage
// failed restarts from a crash clone of its in-memory filesystem: with only
// what it had synced.
//
// Each case runs in a child process of the test binary (inOwnProcess): a
// panic ends the whole binary, and so would hide every other test's result.
//
// The seed (1 unless KEYSTORE_FAULT_SEED is set; each case logs it) draws
// the failing follower, the number of writes before the fault, and the
// writers' choices of node and their bodies.

// faultCase is one kind of storage fault.
type faultCase struct {
	name string
	// leader: the fault hits the leader; otherwise a follower.
	leader bool
	// match selects the operations that fail.
	match func(op errorfs.Op) bool
	// when the fault is switched on.
	when faultWhen
	// survives: the node copes with the fault and goes on serving.
	survives bool
	// bodyBytes is the size of each completed response body.
	bodyBytes int
	// onDisk: the nodes keep their data on the real disk, not on a
	// crashable in-memory filesystem, which copies a whole file at every
	// sync (slow once the log's 32 MiB preallocated segments are in use).
	// The failing node must then survive the fault: it is not crashed.
	onDisk bool
	// knownPanic, when set, is the start of the panic this fault causes
	// today, a defect outside this package (see the case's comment). The
	// case passes while its process dies of that panic, and fails if it
	// dies of another or stops dying: then clear knownPanic, and the
	// whole contract applies.
	knownPanic string
}

// faultWhen says when a case's fault is switched on.
type faultWhen int

const (
	// faultRunning: after some writes, while the node runs.
	faultRunning faultWhen = iota
	// faultFromStart: before any write.
	faultFromStart
	// faultAtOpen: while the node restarts (after missing some writes);
	// it must refuse to start.
	faultAtOpen
)

var (
	syncOps  = []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo}
	writeOps = []errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt}
	readOps  = []errorfs.OpKind{errorfs.OpFileRead, errorfs.OpFileReadAt}
)

var faultCases = []faultCase{
	{name: "raftlog-fsync-follower", match: raftLogOp(syncOps...)},
	{name: "raftlog-fsync-leader", leader: true, match: raftLogOp(syncOps...)},
	{name: "raftlog-write-follower", match: raftLogOp(writeOps...)},
	{name: "raftlog-write-leader", leader: true, match: raftLogOp(writeOps...)},
	// Pebble's WAL (db/*.log) takes every apply batch, unsynced; a log
	// compaction syncs it. Pebble treats a failed WAL write or sync as
	// fatal (db.go: panic in commitWrite, Logger.Fatalf on a failed
	// commit), and storage's pebbleLogger.Fatalf panics: the process dies.
	{name: "pebble-write-on-apply-follower", match: pebbleWALOp(writeOps...), knownPanic: "pebble: fatal commit error"},
	{name: "pebble-sync-follower", match: pebbleWALOp(syncOps...), knownPanic: "pebble: fatal commit error"},
	// Replay reads every segment of the log when the store opens; Pebble
	// reads its MANIFEST, OPTIONS and WAL.
	{name: "raftlog-read-at-open-follower", when: faultAtOpen, match: raftLogOp(readOps...)},
	{name: "pebble-read-at-open-follower", when: faultAtOpen, match: pebbleOp(readOps...)},
	// A new segment is renamed from a spare file filled beforehand, once
	// the active one holds 256 KiB (so at most once early on, then every
	// 32 MiB); a failed rename falls back to creating the segment.
	{name: "raftlog-rename-follower", when: faultFromStart, survives: true, onDisk: true, bodyBytes: 32 << 10, match: raftLogOp(errorfs.OpRename)},
}

func TestStorageFaults(t *testing.T) {
	for _, fc := range faultCases {
		t.Run(fc.name, func(t *testing.T) {
			if inOwnProcess(t, fc.knownPanic) {
				return
			}
			runFaultCase(t, fc)
		})
	}
}

func runFaultCase(t *testing.T, fc faultCase) {
	seed := faultSeed(t)
	h := fnv.New64a()
	h.Write([]byte(fc.name))
	rng := rand.New(rand.NewPCG(seed, h.Sum64()))
	faults := newDiskFaults(fc.match)
	c := testcluster.Start(t, testcluster.Options{
		// Crashable: a node whose storage failed restarts with only what
		// it had synced.
		Crashable: !fc.onDisk,
		WrapFS:    faults.wrap,
		// Compact often: log compactions (which sync Pebble) run during
		// the fault, and the restarted node catches up by a snapshot.
		Raft: raftnode.Config{SnapshotEntries: 200, KeepEntries: 50},
	})
	lead := c.Leader()
	target := lead
	if !fc.leader {
		followers := []string{}
		for _, n := range c.Names {
			if n != lead {
				followers = append(followers, n)
			}
		}
		target = followers[rng.IntN(len(followers))]
	}
	others := []string{}
	for _, n := range c.Names {
		if n != target {
			others = append(others, n)
		}
	}
	faults.setTarget(target)
	t.Logf("seed %d: fault %s on %s (leader %s)", seed, fc.name, target, lead)

	clients := map[string]keystorev1.KeyStoreServiceClient{}
	for _, n := range c.Names {
		clients[n] = c.Client(n)
	}
	led := newLedger()
	if fc.when == faultFromStart {
		faults.on()
	}
	ctx, stopWriters := context.WithCancel(context.Background())
	writersDone := runWriters(ctx, clients, c.Names, seed, fc.bodyBytes, led)
	defer func() { stopWriters(); writersDone() }()

	// Some writes first, a seeded number of them.
	led.waitAcked(t, "", 20+rng.IntN(40), 20*time.Second)

	switch fc.when {
	case faultRunning:
		faults.on()
	case faultAtOpen:
		c.StopNode(target)
		led.waitAcked(t, others[0], led.ackedThrough(others[0])+20, 20*time.Second)
		faults.on()
		err := c.TryStartNode(target)
		if err == nil {
			t.Fatalf("%s started though its storage fails reads; want an error", target)
		}
		if faults.injected() == 0 {
			t.Fatalf("%s failed to start without an injected fault: %v", target, err)
		}
		t.Logf("%s refused to start: %v", target, err)
	}
	switch {
	case fc.when == faultAtOpen:
		// It did not start: nothing of it runs.
	case fc.survives:
		waitInjected(t, faults, 30*time.Second)
		// It goes on: writes through it are acknowledged and it serves.
		led.waitAcked(t, target, led.ackedThrough(target)+5, 20*time.Second)
		if st := c.Server(target).Status(); !st.Healthy {
			t.Fatalf("%s stopped after a fault it should cope with", target)
		}
		waitHealth(t, c, target, healthpb.HealthCheckResponse_SERVING, 10*time.Second)
		t.Logf("%s goes on serving after %d injected faults", target, faults.injected())
	default:
		waitInjected(t, faults, 20*time.Second)
		waitUnhealthy(t, c, target, 20*time.Second)
		waitHealth(t, c, target, healthpb.HealthCheckResponse_NOT_SERVING, 10*time.Second)
		t.Logf("%s stopped serving after %d injected faults", target, faults.injected())
	}

	// The other two go on serving writes.
	for _, n := range others {
		led.waitAcked(t, n, led.ackedThrough(n)+5, 30*time.Second)
		waitHealth(t, c, n, healthpb.HealthCheckResponse_SERVING, 15*time.Second)
	}
	stopWriters()
	writersDone()
	led.verify(t, c.Client(others[0]), "on "+others[0])

	// Restarted on a good disk, it rejoins and catches up. A node whose
	// storage failed crashes: it keeps only what it synced. A node that
	// runs stops (see testcluster's CrashNode: crashing a node that
	// runs on would let it acknowledge writes its restart has lost).
	if s := c.Server(target); s != nil {
		if s.Status().Healthy {
			c.StopNode(target)
		} else {
			c.CrashNode(target)
		}
	}
	faults.off()
	c.StartNode(target)
	waitHealth(t, c, target, healthpb.HealthCheckResponse_SERVING, 30*time.Second)
	waitCaughtUp(t, c, target, 30*time.Second)
	c.AssertSameState()
	led.verify(t, c.Client(target), "on the restarted "+target)
	completed, claimed := led.counts()
	t.Logf("%d completes and %d further claims acknowledged, all readable; %s caught up", completed, claimed, target)
}

// diskFaults makes the storage operations of one node (the target) that
// match a rule fail while it is on. Its wrap is a testcluster.Options.WrapFS
// for every node.
type diskFaults struct {
	target atomic.Value // string
	toggle *errorfs.Toggle
	count  *errorfs.Counter
}

func newDiskFaults(match func(errorfs.Op) bool) *diskFaults {
	f := &diskFaults{}
	f.target.Store("")
	f.count = &errorfs.Counter{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !match(op) {
			return nil
		}
		return fmt.Errorf("%w: op %d on %s", errorfs.ErrInjected, op.Kind, op.Path)
	})}
	f.toggle = &errorfs.Toggle{Injector: f.count}
	return f
}

func (f *diskFaults) setTarget(node string) { f.target.Store(node) }
func (f *diskFaults) on()                   { f.toggle.On() }
func (f *diskFaults) off()                  { f.toggle.Off() }
func (f *diskFaults) injected() uint64      { return f.count.Load() }

func (f *diskFaults) wrap(node string, fs vfs.FS) vfs.FS {
	return errorfs.Wrap(fs, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if f.target.Load().(string) != node {
			return nil
		}
		return f.toggle.MaybeError(op)
	}))
}

// raftLogOp matches operations of the given kinds on the Raft log's files
// and directory (<data>/db/raftlog).
func raftLogOp(kinds ...errorfs.OpKind) func(errorfs.Op) bool {
	return func(op errorfs.Op) bool {
		return hasKind(op, kinds) && (strings.Contains(op.Path, "/db/raftlog/") || strings.HasSuffix(op.Path, "/db/raftlog"))
	}
}

// pebbleOp matches operations of the given kinds on Pebble's files
// (<data>/db/*, the raft log's directory excepted).
func pebbleOp(kinds ...errorfs.OpKind) func(errorfs.Op) bool {
	return func(op errorfs.Op) bool {
		return hasKind(op, kinds) && filepath.Base(filepath.Dir(op.Path)) == "db" && filepath.Base(op.Path) != "raftlog"
	}
}

// pebbleWALOp matches operations of the given kinds on Pebble's write-ahead
// log files (<data>/db/NNNNNN.log).
func pebbleWALOp(kinds ...errorfs.OpKind) func(errorfs.Op) bool {
	return func(op errorfs.Op) bool {
		return pebbleOp(kinds...)(op) && strings.HasSuffix(op.Path, ".log")
	}
}

func hasKind(op errorfs.Op, kinds []errorfs.OpKind) bool {
	for _, k := range kinds {
		if op.Kind == k {
			return true
		}
	}
	return false
}

// ledger records the writes the cluster acknowledged.
type ledger struct {
	mu        sync.Mutex
	completed map[string]*keystorev1.Response // Complete acknowledged
	claimed   map[string]bool                 // only the Claim acknowledged
	through   map[string]int                  // acknowledged completes by node
	total     int
}

func newLedger() *ledger {
	return &ledger{completed: map[string]*keystorev1.Response{}, claimed: map[string]bool{}, through: map[string]int{}}
}

func (l *ledger) ackedThrough(node string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if node == "" {
		return l.total
	}
	return l.through[node]
}

func (l *ledger) counts() (completed, claimed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.completed), len(l.claimed)
}

// waitAcked waits until n completes were acknowledged through node (any
// node if "").
func (l *ledger) waitAcked(t *testing.T, node string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for l.ackedThrough(node) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d writes acknowledged through %q after %s; want %d", l.ackedThrough(node), node, timeout, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// verify reads every acknowledged write through kv (linearizable Gets).
func (l *ledger) verify(t *testing.T, kv keystorev1.KeyStoreServiceClient, where string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for key, want := range l.completed {
		got, err := kv.Get(ctxT(t, 10*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: key})
		if err != nil {
			t.Fatalf("acknowledged complete of %s, get %s: %v", key, where, err)
		}
		if got.GetRecord().GetState() != keystorev1.RecordState_RECORD_STATE_COMPLETED || !proto.Equal(got.GetRecord().GetResponse(), want) {
			t.Fatalf("acknowledged complete of %s, get %s: got state %v; want COMPLETED with the response", key, where, got.GetRecord().GetState())
		}
	}
	for key := range l.claimed {
		if _, err := kv.Get(ctxT(t, 10*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: key}); err != nil {
			t.Fatalf("acknowledged claim of %s, get %s: %v", key, where, err)
		}
	}
}

// runWriters runs clients that claim and complete fresh keys through random
// nodes until ctx ends, recording what was acknowledged. Like the client
// library, a writer leaves a node that failed a call alone for a while. The
// returned func waits for them.
func runWriters(ctx context.Context, clients map[string]keystorev1.KeyStoreServiceClient, names []string, seed uint64, bodyBytes int, led *ledger) (wait func()) {
	const (
		writers = 6
		timeout = 2 * time.Second
		avoid   = 500 * time.Millisecond
	)
	if bodyBytes == 0 {
		bodyBytes = 64
	}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			failed := map[string]time.Time{} // node → when a call through it last failed
			for i := 0; ctx.Err() == nil; i++ {
				node := names[rng.IntN(len(names))]
				if time.Since(failed[node]) < avoid {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				kv := clients[node]
				key := fmt.Sprintf("w%d-%d", w, i)
				body := make([]byte, bodyBytes)
				for j := range body {
					body[j] = byte(rng.Uint32())
				}
				cctx, cancel := context.WithTimeout(ctx, timeout)
				cl, err := kv.Claim(cctx, &keystorev1.ClaimRequest{Namespace: "test", Key: key})
				if err != nil || cl.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
					cancel()
					failed[node] = time.Now()
					continue
				}
				led.mu.Lock()
				led.claimed[key] = true
				led.mu.Unlock()
				resp := &keystorev1.Response{Code: 201, Body: body}
				_, err = kv.Complete(cctx, &keystorev1.CompleteRequest{Namespace: "test", Key: key, Token: cl.Token, Response: resp})
				cancel()
				if err != nil {
					failed[node] = time.Now()
					continue
				}
				led.mu.Lock()
				delete(led.claimed, key)
				led.completed[key] = resp
				led.through[node]++
				led.total++
				led.mu.Unlock()
			}
		}(w)
	}
	return wg.Wait
}

func waitInjected(t *testing.T, f *diskFaults, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for f.injected() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no fault injected within %s: the case tests nothing", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitUnhealthy(t *testing.T, c *testcluster.Cluster, node string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for c.Server(node).Status().Healthy {
		if time.Now().After(deadline) {
			t.Fatalf("%s still Healthy %s after its storage failed", node, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitHealth waits until node's health service reports want.
func waitHealth(t *testing.T, c *testcluster.Cluster, node string, want healthpb.HealthCheckResponse_ServingStatus, timeout time.Duration) {
	t.Helper()
	hc := healthpb.NewHealthClient(c.Conn(node))
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: keystorev1.KeyStoreService_ServiceDesc.ServiceName})
		cancel()
		if err == nil && resp.GetStatus() == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s health after %s: got %v, %v; want %v", node, timeout, resp.GetStatus(), err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCaughtUp waits until node applied what the leader had applied when
// the wait began.
func waitCaughtUp(t *testing.T, c *testcluster.Cluster, node string, timeout time.Duration) {
	t.Helper()
	var target uint64
	for _, n := range c.Names {
		if s := c.Server(n); s != nil && n != node {
			if st := s.Status(); st.Healthy && st.Leader == st.ID {
				target = st.Applied
			}
		}
	}
	if target == 0 {
		t.Fatal("no healthy leader")
	}
	deadline := time.Now().Add(timeout)
	for c.Server(node).Status().Applied < target {
		if time.Now().After(deadline) {
			t.Fatalf("%s applied %d after %s; want >= %d, the leader's", node, c.Server(node).Status().Applied, timeout, target)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// faultSeed returns the seed of the fault cases: KEYSTORE_FAULT_SEED, or 1.
func faultSeed(t *testing.T) uint64 {
	t.Helper()
	s := os.Getenv("KEYSTORE_FAULT_SEED")
	if s == "" {
		return 1
	}
	seed, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("KEYSTORE_FAULT_SEED=%q: %v", s, err)
	}
	return seed
}

// childTestEnv names the test a child process of the test binary is to run
// (see inOwnProcess).
const childTestEnv = "KEYSTORE_CHILD_TEST"

// inOwnProcess runs the calling test in a child process of the test binary
// and reports its outcome; it returns true there, and the caller returns.
// In that child it returns false, and the caller runs the test. A panic ends
// the whole test binary and every test in it; run so, it fails this test
// only, and the failure shows the panic. knownPanic, if not "", is the
// start of a panic the test is known to die of today (see
// faultCase.knownPanic).
func inOwnProcess(t *testing.T, knownPanic string) bool {
	t.Helper()
	if os.Getenv(childTestEnv) == t.Name() {
		return false
	}
	var pattern []string
	for _, part := range strings.Split(t.Name(), "/") {
		pattern = append(pattern, "^"+regexp.QuoteMeta(part)+"$")
	}
	args := []string{"-test.run=" + strings.Join(pattern, "/"), "-test.count=1", "-test.v"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout="+time.Until(d).Round(time.Second).String())
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childTestEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	// The child's own log lines.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "_test.go:") {
			t.Log(strings.TrimSpace(line))
		}
	}
	panicked := bytes.Index(out, []byte("\npanic: "))
	switch {
	case knownPanic != "" && panicked >= 0 && bytes.HasPrefix(out[panicked+len("\npanic: "):], []byte(knownPanic)):
		t.Logf("KNOWN DEFECT: the process died of %q, as it does today; this case checks nothing else until that is fixed", excerpt(out[panicked+1:], 1))
	case panicked >= 0:
		t.Fatalf("%s panicked (in its own process; in the test binary it would have ended every test):\n%s", t.Name(), excerpt(out[panicked+1:], 60))
	case err != nil:
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("running %s in its own process: %v", t.Name(), err)
		}
		t.Fatalf("%s failed in its own process (%v):\n%s", t.Name(), err, excerpt(out, 200))
	case knownPanic != "":
		t.Fatalf("%s no longer dies of the known panic %q: clear its knownPanic", t.Name(), knownPanic)
	}
	return true
}

// excerpt returns the first n lines of b.
func excerpt(b []byte, n int) string {
	lines := strings.SplitN(string(b), "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}

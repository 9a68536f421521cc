package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/backup"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// tryBackup calls Backup on conn and returns the file it streams, the
// info and the number of messages.
func tryBackup(t *testing.T, conn *grpc.ClientConn, req *keystorev1.BackupRequest) ([]byte, *keystorev1.BackupInfo, int, error) {
	t.Helper()
	stream, err := keystorev1.NewClusterServiceClient(conn).Backup(ctxT(t, 20*time.Second), req)
	if err != nil {
		return nil, nil, 0, err
	}
	var (
		file bytes.Buffer
		info *keystorev1.BackupInfo
		msgs int
	)
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, 0, err
		}
		if msgs == 0 && msg.GetInfo() == nil {
			t.Fatal("the first message carries no info")
		}
		if msgs > 0 && msg.GetInfo() != nil {
			t.Fatal("a message after the first carries info")
		}
		if len(msg.GetData()) > 1<<20 {
			t.Fatalf("a message of %d bytes; want at most 1 MiB", len(msg.GetData()))
		}
		if msg.GetInfo() != nil {
			info = msg.GetInfo()
		}
		file.Write(msg.GetData())
		msgs++
	}
	return file.Bytes(), info, msgs, nil
}

// startFreshNode starts a node of a new cluster on fresh loopback ports.
func startFreshNode(t *testing.T, cfg server.Config) (*server.Server, *grpc.ClientConn) {
	t.Helper()
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.PeerListener, cfg.ClientListener = pl, cl
	cfg.ClientAddr, cfg.PeerAddr = cl.Addr().String(), pl.Addr().String()
	if len(cfg.Join) == 0 {
		cfg.InitialCluster = map[string]string{cfg.Name: cfg.PeerAddr}
	}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(time.Second) })
	conn, err := grpc.NewClient(cfg.ClientAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return s, conn
}

func waitServing(t *testing.T, conn *grpc.ClientConn, timeout time.Duration) {
	t.Helper()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not SERVING after %s (last: %v, %v)", timeout, resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBackupFromFollowerRestoreNewCluster is the runbook of docs/backup.md
// end to end: records completed before a backup, taken from a follower
// while a writer keeps writing, replay byte for byte from a new cluster
// restored from it; records written after it are absent; the restored
// cluster has new ids, and a second node joins it and converges.
func TestBackupFromFollowerRestoreNewCluster(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	lead := c.Leader()
	if lead == "" {
		lead = c.Names[0]
	}
	kv := c.Client(lead)
	before := map[string]*keystorev1.Response{}
	for i := range 40 {
		key := fmt.Sprintf("before-%d", i)
		before[key] = lifecycle(t, kv, key)
	}
	// Bodies large enough that the file takes several messages.
	for i := range 6 {
		key := fmt.Sprintf("big-%d", i)
		ctx := ctxT(t, 10*time.Second)
		cl, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: key, Fingerprint: []byte("fp-" + key)})
		if err != nil {
			t.Fatal(err)
		}
		resp := &keystorev1.Response{Code: 200, Body: bytes.Repeat([]byte{byte('a' + i)}, 400<<10)}
		if _, err := kv.Complete(ctx, &keystorev1.CompleteRequest{Namespace: "test", Key: key, Token: cl.Token, Response: resp}); err != nil {
			t.Fatal(err)
		}
		before[key] = resp
	}

	// A writer goes on writing while the follower backs up.
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		during  atomic.Int64
		writeMu sync.Mutex
		written = map[string]*keystorev1.Response{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			key := fmt.Sprintf("during-%d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			cl, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: key, Fingerprint: []byte("fp-" + key)})
			if err == nil {
				resp := &keystorev1.Response{Code: 201, Body: []byte("body of " + key)}
				if _, err = kv.Complete(ctx, &keystorev1.CompleteRequest{Namespace: "test", Key: key, Token: cl.Token, Response: resp}); err == nil {
					writeMu.Lock()
					written[key] = resp
					writeMu.Unlock()
					during.Add(1)
				}
			}
			cancel()
		}
	}()
	for during.Load() < 5 {
		time.Sleep(10 * time.Millisecond)
	}
	follower := c.Follower()
	// A cancelled backup ends, and leaves no backup "under way".
	{
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := keystorev1.NewClusterServiceClient(c.Conn(follower)).Backup(ctx, &keystorev1.BackupRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	// The backup proper; ResourceExhausted while the cancelled one ends.
	var (
		file []byte
		info *keystorev1.BackupInfo
		msgs int
	)
	for deadline := time.Now().Add(5 * time.Second); ; {
		var err error
		file, info, msgs, err = tryBackup(t, c.Conn(follower), &keystorev1.BackupRequest{})
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("backup after a cancelled one: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for n := during.Load(); during.Load() < n+5; {
		time.Sleep(10 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	after := map[string]*keystorev1.Response{}
	for i := range 10 {
		key := fmt.Sprintf("after-%d", i)
		after[key] = lifecycle(t, kv, key)
	}

	if msgs < 3 {
		t.Errorf("the backup came in %d messages; want several of at most 1 MiB", msgs)
	}
	if !info.GetLinearizable() || info.GetNode() != follower || info.GetIndex() == 0 {
		t.Errorf("info %v; want a linearizable backup from %s", info, follower)
	}
	sum, err := backup.Verify(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	h := sum.Header
	if h.Index != info.GetIndex() || h.Term != info.GetTerm() || h.ClusterID != c.Server(follower).ClusterID() || len(h.Members) != 3 || len(h.ConfState.Voters) != 3 {
		t.Fatalf("header %+v does not describe the source cluster at %d", h, info.GetIndex())
	}

	// Restore: a damaged copy is refused and leaves nothing behind.
	dir := filepath.Join(t.TempDir(), "restored")
	damaged := bytes.Clone(file)
	damaged[len(damaged)/2] ^= 0x10
	if _, err := server.Restore(server.RestoreConfig{DataDir: dir, Name: "r1"}, bytes.NewReader(damaged)); !errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("restore of a damaged backup: %v; want backup.ErrCorrupt", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused restore left %s behind (%v)", dir, err)
	}
	res, err := server.Restore(server.RestoreConfig{DataDir: dir, Name: "r1"}, bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != h.Records {
		t.Errorf("restored %d records; the header says %d", res.Records, h.Records)
	}
	if _, err := server.Restore(server.RestoreConfig{DataDir: dir, Name: "r1"}, bytes.NewReader(file)); !errors.Is(err, server.ErrDataDirNotEmpty) {
		t.Fatalf("a second restore into the same dir: %v; want ErrDataDirNotEmpty", err)
	}

	r1, conn1 := startFreshNode(t, server.Config{Name: "r1", DataDir: dir})
	waitServing(t, conn1, 15*time.Second)
	if r1.ClusterID() == c.Server(follower).ClusterID() || r1.ClusterID() != res.ClusterID {
		t.Fatalf("restored cluster id %x; want the new %x, not the old %x", r1.ClusterID(), res.ClusterID, c.Server(follower).ClusterID())
	}
	if st := r1.Status(); st.ID != res.NodeID || st.Applied <= h.Index {
		t.Fatalf("restored node: id %x applied %d; want id %x, past the backup's index %d", st.ID, st.Applied, res.NodeID, h.Index)
	}
	// Expiry resumes from the backup's log time, never from before it.
	if lt := r1.Store().LogTime(); lt < h.LogTime.UnixNano() {
		t.Fatalf("restored log time %d; want at least the backup's %d", lt, h.LogTime.UnixNano())
	}
	rkv := keystorev1.NewKeyStoreServiceClient(conn1)
	replay := func(kv keystorev1.KeyStoreServiceClient, key string, want *keystorev1.Response) {
		t.Helper()
		ctx := ctxT(t, 10*time.Second)
		cl, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "test", Key: key, Fingerprint: []byte("fp-" + key)})
		if err != nil {
			t.Fatalf("claim %s: %v", key, err)
		}
		if cl.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED || !proto.Equal(cl.GetRecord().GetResponse(), want) {
			t.Fatalf("claim %s: outcome %v, response differs: %v", key, cl.GetOutcome(), cl.GetRecord().GetResponse() == nil)
		}
		got, err := proto.Marshal(cl.GetRecord().GetResponse())
		if err != nil {
			t.Fatal(err)
		}
		if w, _ := proto.Marshal(want); !bytes.Equal(got, w) {
			t.Fatalf("claim %s: response bytes differ", key)
		}
	}
	for key, want := range before {
		replay(rkv, key, want)
	}
	// A write completed during the backup is there whole, or not at all.
	var present int
	for key, want := range written {
		g, err := rkv.Get(ctxT(t, 5*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: key})
		switch {
		case status.Code(err) == codes.NotFound:
		case err != nil:
			t.Fatal(err)
		case g.GetRecord().GetState() == keystorev1.RecordState_RECORD_STATE_COMPLETED:
			if !proto.Equal(g.GetRecord().GetResponse(), want) {
				t.Fatalf("%s: restored response differs", key)
			}
			present++
		}
	}
	for key := range after {
		if _, err := rkv.Get(ctxT(t, 5*time.Second), &keystorev1.GetRequest{Namespace: "test", Key: key}); status.Code(err) != codes.NotFound {
			t.Fatalf("get %s, written after the backup: %v; want NOT_FOUND", key, err)
		}
	}
	t.Logf("backup at index %d: %d bytes in %d messages; %d of %d writes made during it are in it", h.Index, len(file), msgs, present, len(written))

	// The restored cluster takes writes, and a second node joins it.
	lifecycle(t, rkv, "restored-1")
	r2, conn2 := startFreshNode(t, server.Config{Name: "r2", DataDir: filepath.Join(t.TempDir(), "r2"), Join: []string{r1.ClientAddr()}})
	waitServing(t, conn2, 20*time.Second)
	if r2.ClusterID() != r1.ClusterID() {
		t.Fatalf("r2 joined cluster %x; want %x", r2.ClusterID(), r1.ClusterID())
	}
	for deadline := time.Now().Add(15 * time.Second); ; {
		voters := 0
		for _, m := range r1.RaftMembers() {
			if !m.Learner {
				voters++
			}
		}
		if voters == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("r2 was not promoted to voter: %+v", r1.RaftMembers())
		}
		time.Sleep(50 * time.Millisecond)
	}
	r2kv := keystorev1.NewKeyStoreServiceClient(conn2)
	replay(r2kv, "before-0", before["before-0"])
	replay(r2kv, "big-5", before["big-5"])
	for deadline := time.Now().Add(10 * time.Second); ; {
		s1, a1, err1 := r1.Store().ChecksumAt()
		s2, a2, err2 := r2.Store().ChecksumAt()
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if a1 == a2 {
			if s1 != s2 {
				t.Fatalf("r1 and r2 differ at applied index %d", a1)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("r1 and r2 did not converge: applied %d and %d", a1, a2)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(h.KeystoreVersion, "keystore") {
		t.Errorf("header keystore version %q", h.KeystoreVersion)
	}
}

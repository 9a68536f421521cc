package api_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/api"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"github.com/keystore-dev/keystore/storage"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeReplicator is an in-memory twin of raftnode.Node: each proposal
// becomes the next log entry, stamped with the fake's clock, and is applied
// at once to a real storage.Store, so the real state machine answers.
type fakeReplicator struct {
	store *storage.Store
	now   func() time.Time

	mu        sync.Mutex // serializes applies, like raft's single apply loop
	index     uint64
	proposals int
	reads     int
	// proposeErr and readErr, when set, are returned instead of replicating.
	proposeErr, readErr error
	// block makes Propose and ReadIndex wait for their context to end and
	// then fail as raftnode does, with ErrTimeout.
	block bool
}

func (f *fakeReplicator) Propose(ctx context.Context, requestID uint64, command []byte) (*statev1.Result, error) {
	f.mu.Lock()
	f.proposals++
	block, perr := f.block, f.proposeErr
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, raftnode.ErrTimeout
	}
	if perr != nil {
		return nil, perr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index++
	if requestID == 0 {
		requestID = f.index + 1<<40
	}
	data, err := proto.Marshal(&statev1.Entry{RequestId: requestID, Time: f.now().UnixNano(), Command: command})
	if err != nil {
		return nil, err
	}
	res, err := f.store.Apply([]raftpb.Entry{{Term: 1, Index: f.index, Type: raftpb.EntryNormal, Data: data}}, nil)
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

func (f *fakeReplicator) ReadIndex(ctx context.Context) error {
	f.mu.Lock()
	f.reads++
	block, rerr := f.block, f.readErr
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return raftnode.ErrTimeout
	}
	return rerr
}

func (f *fakeReplicator) counts() (proposals, reads int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.proposals, f.reads
}

func (f *fakeReplicator) set(fn func(f *fakeReplicator)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// manualClock is a fake clock that moves only when told.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// t0 is the manual clock's start.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535_000_000, time.UTC)

type testEnv struct {
	client keystorev1.KeyStoreServiceClient
	batch  keystorev1.BatchServiceClient
	bsvc   *api.BatchService
	svc    keystorev1.KeyStoreServiceServer // for calls gRPC would mask
	repl   *fakeReplicator
	clock  *manualClock // nil when the fake stamps entries with time.Now
}

// newEnv serves the service over bufconn on a fresh in-memory store. With
// realTime the fake stamps entries with time.Now; otherwise with a manual
// clock starting at t0.
func newEnv(t *testing.T, cfg api.Config, realTime bool) *testEnv {
	t.Helper()
	store, err := storage.Open(storage.Config{Dir: "db", FS: vfs.NewMem(), CountUsage: cfg.MaxNamespaceRecords > 0 || cfg.MaxNamespaceBytes > 0})
	if err != nil {
		t.Fatalf("storage.Open: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	if cfg.Usage == nil {
		cfg.Usage = func(ns string) (int64, int64) {
			u := store.NamespaceUsage(ns)
			return u.Records, u.Bytes
		}
	}
	env := &testEnv{repl: &fakeReplicator{store: store, now: time.Now}}
	if !realTime {
		env.clock = &manualClock{t: t0}
		env.repl.now = env.clock.Now
		cfg.LogNow = func() int64 { return env.clock.Now().UnixNano() }
	}
	svc, err := api.NewService(cfg, env.repl, store)
	if err != nil {
		t.Fatalf("api.NewService: %v", err)
	}
	env.svc = svc
	lis := bufconn.Listen(4 << 20)
	srv := grpc.NewServer()
	keystorev1.RegisterKeyStoreServiceServer(srv, svc)
	env.bsvc = api.NewBatchService(svc, api.BatchConfig{})
	keystorev1.RegisterBatchServiceServer(srv, env.bsvc)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	env.client = keystorev1.NewKeyStoreServiceClient(conn)
	env.batch = keystorev1.NewBatchServiceClient(conn)
	return env
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

const ns = "payments"

func (e *testEnv) claim(t *testing.T, key string, lease time.Duration) *keystorev1.ClaimResponse {
	t.Helper()
	resp, err := e.client.Claim(ctxT(t), &keystorev1.ClaimRequest{Namespace: ns, Key: key, Lease: durationpb.New(lease)})
	if err != nil {
		t.Fatalf("Claim(%q): %v", key, err)
	}
	return resp
}

func (e *testEnv) acquire(t *testing.T, key string, lease time.Duration) uint64 {
	t.Helper()
	resp := e.claim(t, key, lease)
	if resp.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
		t.Fatalf("Claim(%q): got outcome %v; want ACQUIRED", key, resp.GetOutcome())
	}
	return resp.GetToken()
}

func (e *testEnv) complete(t *testing.T, key string, token uint64, r *keystorev1.Response) *keystorev1.Record {
	t.Helper()
	resp, err := e.client.Complete(ctxT(t), &keystorev1.CompleteRequest{Namespace: ns, Key: key, Token: token, Response: r})
	if err != nil {
		t.Fatalf("Complete(%q, %d): %v", key, token, err)
	}
	return resp.GetRecord()
}

// checkStatus checks err's code and, when reason is not empty, its
// ErrorInfo.
func checkStatus(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Fatalf("got code %v (%v); want %v", got, err, code)
	}
	if reason == "" {
		return
	}
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetDomain() != "keystore" || info.GetReason() != reason {
				t.Errorf("got ErrorInfo {%q, %q}; want {%q, %q}", info.GetDomain(), info.GetReason(), "keystore", reason)
			}
			return
		}
	}
	t.Errorf("got no ErrorInfo in %v; want reason %s", err, reason)
}

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func checkRecord(t *testing.T, got, want *keystorev1.Record) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("got record %v; want %v", got, want)
	}
}

// withoutToken is r as a caller who does not hold its live claim sees it.
func withoutToken(r *keystorev1.Record) *keystorev1.Record {
	c := proto.Clone(r).(*keystorev1.Record)
	c.Token = 0
	return c
}

package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Config configures a Client.
type Config struct {
	// Endpoints are the client addresses (host:port) of the cluster's
	// nodes. At least one.
	Endpoints []string
	// DialOptions are added to every connection (default: plaintext).
	DialOptions []grpc.DialOption
	// AttemptTimeout bounds one attempt on one node, so that a stuck node
	// is left for the next (default 6s, a little over the server's own
	// quorum timeout). A Claim's wait is added to it.
	AttemptTimeout time.Duration
	// MaxAttempts bounds the attempts of one call across nodes (default 8).
	// The caller's deadline bounds them too.
	MaxAttempts int
	// BackoffBase and BackoffMax shape the pause between attempts:
	// exponential from the base, capped, with full jitter (default 25ms
	// and 1s).
	BackoffBase, BackoffMax time.Duration
	// LeaderRefresh is how often the client asks the nodes which one
	// leads, so that calls go there first: any node accepts any call, but
	// a follower forwards writes, one more hop (default 2s; negative: never
	// ask, start at the first endpoint and stay where calls succeed).
	LeaderRefresh time.Duration
	// MaxInflight matters only against a server without
	// BatchService.Stream, over which writes travel otherwise: it bounds
	// the writes in flight to one node as separate RPCs; writes issued
	// while that many are out wait and go out together, in one
	// BatchService.Batch call, as soon as one comes back (default 8). A
	// lone caller is never delayed: batching only gathers what would
	// otherwise queue in the connection. Negative: no stream and no
	// batches, every write is its own RPC.
	MaxInflight int
}

func (c Config) withDefaults() Config {
	if c.AttemptTimeout <= 0 {
		c.AttemptTimeout = 6 * time.Second
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = 25 * time.Millisecond
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = time.Second
	}
	if c.LeaderRefresh == 0 {
		c.LeaderRefresh = 2 * time.Second
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 8
	}
	return c
}

// Client talks to a keystore cluster. It is safe for concurrent use; Close
// it when done.
type Client struct {
	cfg       Config
	conns     []*grpc.ClientConn
	kv        []keystorev1.KeyStoreServiceClient
	batch     []*batcher
	cluster   []keystorev1.ClusterServiceClient
	preferred atomic.Int64 // the leader's endpoint, or the one that answered last
	closeOnce sync.Once
	stop      chan struct{}
	tracking  sync.WaitGroup
}

// New makes a client of the cluster's endpoints. Connections are made
// lazily by gRPC, so New waits for no node and succeeds while nodes are
// down; calls find the live ones, and the client looks for the leader in
// the background.
//
// ctx bounds New alone: if it is done before New returns, New returns an
// error wrapping ctx.Err() and no client. It is not stored: ending it later
// does not affect the client.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("keystore: new client: %w", err)
	}
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("keystore: Config.Endpoints is empty")
	}
	cfg = cfg.withDefaults()
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Fixed windows turn off gRPC's bandwidth-delay probe, a PING and
		// its ACK for nearly every call on a lightly loaded connection.
		grpc.WithInitialWindowSize(1 << 20), grpc.WithInitialConnWindowSize(1 << 20),
	}, cfg.DialOptions...)
	c := &Client{cfg: cfg, stop: make(chan struct{})}
	for _, ep := range cfg.Endpoints {
		conn, err := grpc.NewClient(ep, opts...)
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		c.conns = append(c.conns, conn)
		kv := keystorev1.NewKeyStoreServiceClient(conn)
		c.kv = append(c.kv, kv)
		bs := keystorev1.NewBatchServiceClient(conn)
		var stream *opStream
		if cfg.MaxInflight >= 0 {
			stream = &opStream{bs: bs, timeout: cfg.AttemptTimeout}
		}
		c.batch = append(c.batch, &batcher{
			stream:      stream,
			kv:          kv,
			bs:          bs,
			maxInflight: cfg.MaxInflight,
			timeout:     cfg.AttemptTimeout,
		})
		c.cluster = append(c.cluster, keystorev1.NewClusterServiceClient(conn))
	}
	if err := ctx.Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("keystore: new client: %w", err)
	}
	if len(c.conns) > 1 && cfg.LeaderRefresh > 0 {
		c.tracking.Add(1)
		go c.trackLeader()
	}
	return c, nil
}

// trackLeader points preferred at the leader's endpoint: now, then every
// LeaderRefresh, until Close.
func (c *Client) trackLeader() {
	defer c.tracking.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-c.stop
		cancel()
	}()
	t := time.NewTicker(c.cfg.LeaderRefresh)
	defer t.Stop()
	for {
		for i, st := range c.Status(ctx) {
			if st.Status != nil && st.Status.GetName() != "" && st.Status.GetName() == st.Status.GetLeader() {
				c.preferred.Store(int64(i))
				break
			}
		}
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
	}
}

// Close closes every connection.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		if c.stop != nil {
			close(c.stop)
			c.tracking.Wait()
		}
		for _, conn := range c.conns {
			err = errors.Join(err, conn.Close())
		}
	})
	return err
}

// invoke runs call on one node after another until it succeeds, fails for
// a reason another node would not change, or the attempts or the caller's
// deadline run out. extra lengthens the attempt timeout (a Claim's wait).
func (c *Client) invoke(ctx context.Context, extra time.Duration, call func(ctx context.Context, node int, limit time.Time) error) error {
	n := len(c.kv)
	start := int(c.preferred.Load())
	var err error
	for attempt := 0; attempt < c.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			if werr := c.backoff(ctx, attempt); werr != nil {
				break
			}
		}
		node := (start + attempt) % n
		err = c.attempt(ctx, extra, node, call)
		if err == nil {
			// Move the preference only if this call had to fail over and
			// nobody moved it meanwhile: a call that merely finished late
			// must not undo what the leader tracking learnt.
			if node != start {
				c.preferred.CompareAndSwap(int64(start), int64(node))
			}
			return nil
		}
		if !retryable(ctx, err) {
			break
		}
	}
	if ctx.Err() != nil && err == nil {
		return ctx.Err()
	}
	return fromStatus(err)
}

// attempt runs call on node within the attempt timeout: call gets the
// time the attempt must end by, or zero when the caller's own deadline
// comes first. A call over the write stream hands the limit to the stream,
// which enforces it without a timer of its own; any other call bounds its
// context with it (bounded).
func (c *Client) attempt(ctx context.Context, extra time.Duration, node int, call func(ctx context.Context, node int, limit time.Time) error) error {
	limit := time.Now().Add(c.cfg.AttemptTimeout + extra)
	if dl, ok := ctx.Deadline(); ok && !dl.After(limit) {
		limit = time.Time{}
	}
	return call(ctx, node, limit)
}

// bounded returns ctx ended at limit as well; ctx itself for a zero limit.
func bounded(ctx context.Context, limit time.Time) (context.Context, context.CancelFunc) {
	if limit.IsZero() {
		return ctx, noCancel
	}
	return context.WithDeadline(ctx, limit)
}

func noCancel() {}

// backoff sleeps an exponential, capped, fully jittered pause.
func (c *Client) backoff(ctx context.Context, attempt int) error {
	ceil := c.cfg.BackoffBase << min(attempt-1, 16)
	if ceil <= 0 || ceil > c.cfg.BackoffMax {
		ceil = c.cfg.BackoffMax
	}
	d := time.Duration(randInt63n(int64(ceil)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func randInt63n(n int64) int64 {
	if n <= 0 {
		return 0
	}
	v, err := rand.Int(rand.Reader, big.NewInt(n))
	if err != nil {
		return n / 2
	}
	return v.Int64()
}

// newRequestID draws the id that makes a Claim's retries recognisable.
func newRequestID() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

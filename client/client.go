package client

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// Config configures a Client.
type Config struct {
	// Endpoints are the client addresses (host:port) of the cluster's
	// nodes, or of a load balancer in front of them. At least one; unless
	// NoDiscovery, that of one live node is enough.
	Endpoints []string
	// DialOptions are added to every connection, after those of TLS and
	// the token (a transport credential given here replaces TLS's).
	DialOptions []grpc.DialOption
	// TLS, when set, makes every connection use TLS with it: the seeds'
	// and the discovered endpoints'. Nil: plaintext. New copies it; the
	// functions it holds are shared by every connection and must be safe
	// for concurrent use.
	//
	// With ServerName empty, the name verified is each endpoint's host (a
	// DNS name or an IP address), set by gRPC per connection; set it when
	// the nodes' certificates name something else, e.g. one name for the
	// whole cluster. RootCAs nil verifies against the system's roots.
	// Certificates holds a client certificate, for servers that identify
	// callers by it.
	//
	// To pick up a rotated client certificate or CA without a new Client,
	// set GetClientCertificate (called on every handshake) and, for the
	// CA, InsecureSkipVerify with a VerifyConnection that verifies the
	// server's chain and name against the current CA itself (crypto/tls
	// cannot swap RootCAs). NB: such a VerifyConnection must check the
	// name too. ConnectionState.ServerName carries the endpoint's host
	// when it is a DNS name, but is empty for an IP address: with IP
	// endpoints, set ServerName and check that.
	TLS *tls.Config
	// Token, when set, is sent as "authorization: Bearer <token>" with
	// every call, MemberList and Status included. It needs TLS unless
	// InsecureToken: New refuses it otherwise.
	Token string
	// TokenFile, instead of Token, names a file whose first line (surrounding
	// white space trimmed) is the token. New reads it, and fails if it
	// cannot; calls read it again at most every 2 seconds, so that a token
	// rotated in the file (rewritten, or replaced by a rename) is sent
	// without a new Client. A read that fails then keeps the last token.
	// A write stream (BatchService.Stream) carries the token it was
	// opened with until it ends.
	TokenFile string
	// InsecureToken sends Token (or TokenFile's) over a plaintext
	// connection: for local testing only, as anyone on the path can read
	// it.
	InsecureToken bool
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
	// ask, start at the first endpoint and stay where calls succeed, and
	// no discovery either). The same call tells the members, which
	// discovery follows.
	LeaderRefresh time.Duration
	// NoDiscovery keeps the client to Endpoints. By default the client
	// also calls the cluster's members at the client addresses they
	// publish (ClusterService.MemberList, asked every LeaderRefresh): one
	// endpoint of a live node is enough to find the others, and members
	// added, removed or readdressed later are followed. Endpoints
	// themselves are always kept, listed or not (one may be a load
	// balancer's), and a member that published no client address is left
	// out. Turn discovery off when the addresses members publish are not
	// reachable from the client (behind NAT or port mappings, say).
	NoDiscovery bool
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
	cfg   Config
	opts  []grpc.DialOption
	seeds []string // Config.Endpoints, without repeats

	// set holds the endpoints calls go to (endpoints.go); preferred is the
	// leader's endpoint, or the one that answered last (a call starts at
	// it if it is in the set, at the set's first endpoint otherwise).
	set       atomic.Pointer[endpointSet]
	preferred atomic.Pointer[endpoint]

	mu     sync.Mutex
	open   map[*endpoint]struct{} // every endpoint not yet closed, in the set or retired
	closed bool

	closeOnce sync.Once
	stop      chan struct{}
	tracking  sync.WaitGroup
}

// New makes a client of the cluster's endpoints. Connections are made
// lazily by gRPC, so New waits for no node and succeeds while nodes are
// down; calls find the live ones, and the client looks for the leader, and
// unless Config.NoDiscovery the other members, in the background.
//
// New fails at once on a configuration it cannot use: no endpoints, Token
// and TokenFile both, a TokenFile it cannot read, or a token without TLS
// (unless InsecureToken).
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
	opts, err := credentialOptions(cfg)
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		// Fixed windows turn off gRPC's bandwidth-delay probe, a PING and
		// its ACK for nearly every call on a lightly loaded connection.
		grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20))
	opts = append(opts, cfg.DialOptions...)
	c := &Client{cfg: cfg, opts: opts, open: map[*endpoint]struct{}{}, stop: make(chan struct{})}
	set := &endpointSet{}
	for _, addr := range cfg.Endpoints {
		if slices.Contains(c.seeds, addr) {
			continue
		}
		e, err := c.dial(addr)
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		c.seeds = append(c.seeds, addr)
		set.eps = append(set.eps, e)
	}
	c.set.Store(set)
	c.preferred.Store(set.eps[0])
	if err := ctx.Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("keystore: new client: %w", err)
	}
	if cfg.LeaderRefresh > 0 && (len(set.eps) > 1 || !cfg.NoDiscovery) {
		c.tracking.Add(1)
		go c.track()
	}
	return c, nil
}

// Close closes every connection the client opened, including those of
// endpoints that left the cluster while calls still used them, and stops
// its goroutines.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.stop)
		c.tracking.Wait()
		c.mu.Lock()
		c.closed = true
		open := make([]*endpoint, 0, len(c.open))
		for e := range c.open {
			open = append(open, e)
		}
		c.mu.Unlock()
		for _, e := range open {
			err = errors.Join(err, e.close())
		}
	})
	return err
}

// invoke runs call on one endpoint after another, of the set as the call
// began (the preferred one first), until it succeeds, fails for a reason
// another node would not change, or the attempts or the caller's deadline
// run out. extra lengthens the attempt timeout (a Claim's wait).
func (c *Client) invoke(ctx context.Context, extra time.Duration, call func(ctx context.Context, e *endpoint, limit time.Time) error) error {
	set := c.set.Load()
	pref := c.preferred.Load()
	start := max(set.index(pref), 0)
	first := set.eps[start]
	var err error
	for attempt := 0; attempt < c.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			if werr := c.backoff(ctx, attempt); werr != nil {
				break
			}
		}
		e := set.eps[(start+attempt)%len(set.eps)]
		for !e.acquire() {
			// e left the set since this call took it; the current set
			// does not have it.
			set = c.set.Load()
			e = set.eps[(start+attempt)%len(set.eps)]
		}
		err = c.attempt(ctx, extra, e, call)
		e.release()
		if err == nil {
			// Move the preference only if this call had to fail over and
			// nobody moved it meanwhile: a call that merely finished late
			// must not undo what the leader tracking learnt.
			if e != first {
				c.preferred.CompareAndSwap(pref, e)
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

// attempt runs call on e within the attempt timeout: call gets the
// time the attempt must end by, or zero when the caller's own deadline
// comes first. A call over the write stream hands the limit to the stream,
// which enforces it without a timer of its own; any other call bounds its
// context with it (bounded).
func (c *Client) attempt(ctx context.Context, extra time.Duration, e *endpoint, call func(ctx context.Context, e *endpoint, limit time.Time) error) error {
	limit := time.Now().Add(c.cfg.AttemptTimeout + extra)
	if dl, ok := ctx.Deadline(); ok && !dl.After(limit) {
		limit = time.Time{}
	}
	return call(ctx, e, limit)
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

package client

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// Endpoints and discovery. The client holds an immutable set of endpoints
// (endpointSet) behind an atomic pointer: a call takes the set once and
// tries its endpoints in turn, while the tracker (track) replaces the set
// when the membership changes, copying it. An endpoint in both the old
// and the new set is the same *endpoint, connection, stream and all, so
// the preference (Client.preferred, a pointer to an endpoint) survives
// changes. An endpoint that leaves the set is retired: it takes no new
// calls, and its connection is closed once the calls using it return, so
// that no call in flight is cut.

// statusTimeout bounds one Status or MemberList call of the tracker, and
// each of Status's calls.
const statusTimeout = 2 * time.Second

// endpoint is one node's (or one load balancer's) address and the clients
// of its connection.
type endpoint struct {
	addr    string
	conn    *grpc.ClientConn
	kv      keystorev1.KeyStoreServiceClient
	batch   *batcher
	cluster keystorev1.ClusterServiceClient

	// users counts the calls using the endpoint (acquire, release), plus
	// retiredBit once it left the set.
	users     atomic.Int64
	closeOnce sync.Once
	closeErr  error
	closed    func(*endpoint) // told once the connection is closed
}

const retiredBit = int64(1) << 62

// acquire counts a call that uses the endpoint, unless it is retired
// (false: take the current set instead). The caller must release it.
func (e *endpoint) acquire() bool {
	if e.users.Add(1)&retiredBit != 0 {
		e.release()
		return false
	}
	return true
}

// release ends a call that acquire counted; the last one out of a retired
// endpoint closes it.
func (e *endpoint) release() {
	if e.users.Add(-1) == retiredBit {
		_ = e.close()
	}
}

// retire takes the endpoint out of use: it is closed now if no call uses
// it, otherwise when the last one returns.
func (e *endpoint) retire() {
	if e.users.Add(retiredBit) == retiredBit {
		_ = e.close()
	}
}

// close closes the connection (once), which ends its streams and batches.
func (e *endpoint) close() error {
	e.closeOnce.Do(func() {
		e.closeErr = e.conn.Close()
		if e.closed != nil {
			e.closed(e)
		}
	})
	return e.closeErr
}

// endpointSet is an immutable set of endpoints: the seeds (Config.Endpoints)
// in the order given, then the discovered ones, sorted.
type endpointSet struct {
	eps []*endpoint
}

// index returns the position of e in the set, or -1.
func (s *endpointSet) index(e *endpoint) int {
	if e == nil {
		return -1
	}
	for i, x := range s.eps {
		if x == e {
			return i
		}
	}
	return -1
}

// find returns the endpoint of addr, or nil.
func (s *endpointSet) find(addr string) *endpoint {
	for _, e := range s.eps {
		if e.addr == addr {
			return e
		}
	}
	return nil
}

func (s *endpointSet) addrs() []string {
	out := make([]string, len(s.eps))
	for i, e := range s.eps {
		out[i] = e.addr
	}
	return out
}

// dial makes the endpoint of addr (gRPC connects lazily) and records it
// among the client's open endpoints, for Close.
func (c *Client) dial(addr string) (*endpoint, error) {
	conn, err := grpc.NewClient(addr, c.opts...)
	if err != nil {
		return nil, err
	}
	kv := keystorev1.NewKeyStoreServiceClient(conn)
	bs := keystorev1.NewBatchServiceClient(conn)
	var stream *opStream
	if c.cfg.MaxInflight >= 0 {
		stream = &opStream{bs: bs, timeout: c.cfg.AttemptTimeout}
	}
	e := &endpoint{
		addr: addr,
		conn: conn,
		kv:   kv,
		batch: &batcher{
			stream:      stream,
			kv:          kv,
			bs:          bs,
			maxInflight: c.cfg.MaxInflight,
			timeout:     c.cfg.AttemptTimeout,
		},
		cluster: keystorev1.NewClusterServiceClient(conn),
		closed:  c.forget,
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = conn.Close()
		return nil, errors.New("keystore: client closed")
	}
	c.open[e] = struct{}{}
	c.mu.Unlock()
	return e, nil
}

// forget drops a closed endpoint from those Close must close.
func (c *Client) forget(e *endpoint) {
	c.mu.Lock()
	delete(c.open, e)
	c.mu.Unlock()
}

// Endpoints returns the addresses the client currently calls, sorted: the
// ones it was given and, unless discovery is off, the client addresses of
// the cluster's members as last learnt.
func (c *Client) Endpoints() []string {
	out := c.set.Load().addrs()
	slices.Sort(out)
	return out
}

// track follows the cluster: now, then every LeaderRefresh, until Close.
// With discovery, one MemberList call gives both the members (the set of
// endpoints follows them) and the leader (preferred); without, every
// endpoint is asked for its status, as before discovery, and the one that
// leads is preferred.
func (c *Client) track() {
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
		if c.cfg.NoDiscovery || !c.discover(ctx) {
			c.followLeader(ctx)
		}
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
	}
}

// followLeader asks every endpoint for its status and prefers the one that
// says it leads.
func (c *Client) followLeader(ctx context.Context) {
	set := c.set.Load()
	for i, st := range c.status(ctx, set) {
		if st.Status != nil && st.Status.GetName() != "" && st.Status.GetName() == st.Status.GetLeader() {
			c.preferred.Store(set.eps[i])
			return
		}
	}
}

// discover asks the endpoints for the members, the preferred one first,
// then the others in turn, until one answers and knows a leader (a node
// that knows none may be cut off, its view stale); it makes the set follow
// that answer and prefers the leader's endpoint. It reports false only if
// an endpoint does not serve MemberList (an older server) and none
// answered, so that the caller falls back to asking for statuses.
func (c *Client) discover(ctx context.Context) bool {
	set := c.set.Load()
	order := make([]*endpoint, 0, len(set.eps))
	if p := c.preferred.Load(); set.index(p) >= 0 {
		order = append(order, p)
	}
	for _, e := range set.eps {
		if len(order) == 0 || e != order[0] {
			order = append(order, e)
		}
	}
	unimplemented := false
	for _, e := range order {
		if !e.acquire() {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, statusTimeout)
		resp, err := e.cluster.MemberList(actx, &keystorev1.MemberListRequest{})
		cancel()
		e.release()
		if ctx.Err() != nil {
			return true
		}
		if err != nil {
			unimplemented = unimplemented || status.Code(err) == codes.Unimplemented
			continue
		}
		var leader *keystorev1.Member
		for _, m := range resp.GetMembers() {
			if m.GetIsLeader() {
				leader = m
			}
		}
		if leader == nil {
			continue
		}
		c.adopt(resp.GetMembers())
		c.prefer(leader.GetClientAddress())
		return true
	}
	return !unimplemented
}

// adopt makes the set the seeds plus the members' client addresses (a
// member that has not published one is left out), keeping the endpoints it
// has, dialling new ones and retiring those no longer listed.
func (c *Client) adopt(members []*keystorev1.Member) {
	cur := c.set.Load()
	seed := make(map[string]bool, len(c.seeds))
	for _, a := range c.seeds {
		seed[a] = true
	}
	var found []string
	for _, m := range members {
		if a := m.GetClientAddress(); a != "" && !seed[a] {
			found = append(found, a)
		}
	}
	slices.Sort(found)
	want := append(slices.Clone(c.seeds), slices.Compact(found)...)
	if slices.Equal(want, cur.addrs()) {
		return
	}
	next := &endpointSet{eps: make([]*endpoint, 0, len(want))}
	kept := make(map[*endpoint]bool, len(want))
	for _, a := range want {
		e := cur.find(a)
		if e == nil {
			var err error
			if e, err = c.dial(a); err != nil {
				continue // an address gRPC cannot parse: as if unpublished
			}
		}
		kept[e] = true
		next.eps = append(next.eps, e)
	}
	c.set.Store(next)
	for _, e := range cur.eps {
		if !kept[e] {
			e.retire()
		}
	}
}

// prefer makes the endpoint of addr the preferred one, if the set has it
// and its connection has not just failed (the member may have published an
// address this client cannot reach, or a node that just stopped may still
// be named leader by the others).
func (c *Client) prefer(addr string) {
	if addr == "" {
		return
	}
	e := c.set.Load().find(addr)
	if e == nil || e.conn.GetState() == connectivity.TransientFailure {
		return
	}
	c.preferred.Store(e)
}

// errRetired marks, in status's answer, an endpoint that left the set
// before it could be asked.
var errRetired = errors.New("keystore: endpoint left the set")

// status asks every endpoint of set, at once, for its view of the
// cluster; the answers are in the order of set.
func (c *Client) status(ctx context.Context, set *endpointSet) []NodeStatus {
	out := make([]NodeStatus, len(set.eps))
	var wg sync.WaitGroup
	for i, e := range set.eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !e.acquire() {
				out[i] = NodeStatus{Endpoint: e.addr, Err: errRetired}
				return
			}
			defer e.release()
			actx, cancel := context.WithTimeout(ctx, statusTimeout)
			defer cancel()
			st, err := e.cluster.Status(actx, &keystorev1.StatusRequest{})
			out[i] = NodeStatus{Endpoint: e.addr, Status: st, Err: fromStatus(err)}
		}()
	}
	wg.Wait()
	return out
}

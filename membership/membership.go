package membership

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// State is a member's state as gossip sees it.
type State int

// Gossip states.
const (
	StateUnknown State = iota // never seen
	StateAlive
	StateDead // failed: missed its probes and did not refute the suspicion
	StateLeft // left gracefully (a graceful stop)
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	default:
		return "unknown"
	}
}

// Roles a member gossips (its role in its cluster's Raft group).
const (
	RoleVoter   = "voter"
	RoleLearner = "learner"
	RoleNone    = "" // not a member of a Raft group (yet)
)

// Member is what one node gossips about itself, and its state.
type Member struct {
	ID   uint64
	Name string
	// ClusterID is the cluster the node belongs to; 0 while it belongs to
	// none (it is joining, or waiting to bootstrap).
	ClusterID            uint64
	PeerAddr, ClientAddr string
	Role                 string
	// BootstrapExpect is the node's --bootstrap-expect (0: none), and
	// Proposal the set it proposed to bootstrap (see BootstrapSet).
	BootstrapExpect int
	Proposal        uint64

	// GossipAddr and State are filled in by gossip (ignored in Config.Self).
	GossipAddr string
	State      State
	// leaving is set by Leave just before it says goodbye, so that the
	// others tell a graceful stop from a failure (memberlist reports both
	// alike).
	leaving bool
}

// metaVersion is the version of the gossiped record's encoding.
const metaVersion = 1

// meta is the gossiped record (memberlist node metadata, at most 512
// bytes).
type meta struct {
	V        int    `json:"v"`
	ID       string `json:"id"`
	Name     string `json:"n"`
	Cluster  string `json:"c,omitempty"`
	Peer     string `json:"p,omitempty"`
	Client   string `json:"a,omitempty"`
	Role     string `json:"r,omitempty"`
	Expect   int    `json:"e,omitempty"`
	Proposal string `json:"b,omitempty"`
	Leaving  bool   `json:"l,omitempty"`
}

func encodeMeta(m Member) []byte {
	mt := meta{V: metaVersion, ID: hex(m.ID), Name: m.Name, Peer: m.PeerAddr, Client: m.ClientAddr, Role: m.Role, Expect: m.BootstrapExpect}
	if m.ClusterID != 0 {
		mt.Cluster = hex(m.ClusterID)
	}
	if m.Proposal != 0 {
		mt.Proposal = hex(m.Proposal)
	}
	mt.Leaving = m.leaving
	b, _ := json.Marshal(mt)
	return b
}

// decodeMeta decodes node's record; an error means it is no keystore node
// (or one of a newer, unknown encoding).
func decodeMeta(n *memberlist.Node) (Member, error) {
	var mt meta
	if err := json.Unmarshal(n.Meta, &mt); err != nil {
		return Member{}, fmt.Errorf("membership: node %q gossips no keystore record", n.Name)
	}
	if mt.V != metaVersion {
		return Member{}, fmt.Errorf("membership: node %q gossips record version %d, this node knows %d", n.Name, mt.V, metaVersion)
	}
	m := Member{Name: mt.Name, PeerAddr: mt.Peer, ClientAddr: mt.Client, Role: mt.Role, BootstrapExpect: mt.Expect, GossipAddr: n.Address(), leaving: mt.Leaving}
	var err error
	if m.ID, err = strconv.ParseUint(mt.ID, 16, 64); err != nil || m.ID == 0 || mt.ID != n.Name {
		return Member{}, fmt.Errorf("membership: node %q gossips id %q", n.Name, mt.ID)
	}
	if mt.Cluster != "" {
		if m.ClusterID, err = strconv.ParseUint(mt.Cluster, 16, 64); err != nil {
			return Member{}, fmt.Errorf("membership: node %q gossips cluster %q", n.Name, mt.Cluster)
		}
	}
	if mt.Proposal != "" {
		if m.Proposal, err = strconv.ParseUint(mt.Proposal, 16, 64); err != nil {
			return Member{}, fmt.Errorf("membership: node %q gossips proposal %q", n.Name, mt.Proposal)
		}
	}
	return m, nil
}

func hex(v uint64) string { return strconv.FormatUint(v, 16) }

// Config configures a node's gossip.
type Config struct {
	// Self is what this node gossips (GossipAddr and State are ignored).
	Self Member
	// BindAddr is where gossip listens, host:port (TCP and UDP); port 0
	// picks one.
	BindAddr string
	// AdvertiseAddr is the address others reach this node's gossip at,
	// when it differs from BindAddr (which may be every interface).
	AdvertiseAddr string
	// Keys encrypt and authenticate gossip (AES, 16, 24 or 32 bytes): the
	// first encrypts, all are accepted (a rotation). nil: none.
	Keys [][]byte
	// Fast uses timings for tests on one machine (memberlist's local
	// profile) instead of a LAN's.
	Fast bool
	// OnChange, when set, is called after a member's record or state
	// changed, from gossip's goroutines: it must not block or call into
	// Gossip.
	OnChange func()
	// Logger receives the gossip logs; nil discards them.
	Logger *slog.Logger
}

// Gossip is one node's membership in the gossip pool.
type Gossip struct {
	ml      *memberlist.Memberlist
	keyring *memberlist.Keyring
	logger  *slog.Logger
	notify  func()
	shut    atomic.Bool // after Leave or Shutdown

	mu      sync.Mutex
	self    Member
	members map[uint64]*record // every node seen, the dead and left too
}

type record struct {
	m     Member
	since time.Time // of the last change
}

// forgetAfter is how long a dead or left node's record is kept.
const forgetAfter = 24 * time.Hour

// Start starts gossiping as cfg.Self; Join then finds the others.
func Start(cfg Config) (*Gossip, error) {
	if cfg.Self.ID == 0 {
		return nil, errors.New("membership: Self.ID is required")
	}
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("membership: gossip address %q: %v", cfg.BindAddr, err)
	}
	g := &Gossip{self: cfg.Self, members: make(map[uint64]*record), logger: cfg.Logger, notify: cfg.OnChange}
	if g.logger == nil {
		g.logger = slog.New(slog.DiscardHandler)
	}
	g.self.GossipAddr, g.self.State = "", StateAlive
	mc := memberlist.DefaultLANConfig()
	// A full state exchange every 10 s rather than 30: a node restarted
	// on a new address whose old self the others still hold alive (its
	// news refused as a conflict) is found dead and reclaimed within a
	// push/pull or two. Cheap for the few nodes of a cluster.
	mc.PushPullInterval = 10 * time.Second
	if cfg.Fast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval, mc.ProbeTimeout = 200*time.Millisecond, 100*time.Millisecond
		mc.GossipInterval, mc.SuspicionMult = 50*time.Millisecond, 3
		mc.PushPullInterval = 2 * time.Second
	}
	mc.Name = hex(cfg.Self.ID)
	mc.BindAddr, mc.BindPort = host, port
	if cfg.AdvertiseAddr != "" {
		ah, ap, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("membership: advertised gossip address %q: %v", cfg.AdvertiseAddr, err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	// The label keeps keystore's gossip apart from any other memberlist
	// pool sharing the network.
	mc.Label = "keystore"
	// A node restarted on a new address takes its name back from its dead
	// self at once: the name is its node id, unique and never reused, and
	// the alive delegate checks the record.
	mc.DeadNodeReclaimTime = time.Second
	if len(cfg.Keys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
		if err != nil {
			return nil, fmt.Errorf("membership: gossip key: %v", err)
		}
		mc.Keyring, g.keyring = kr, kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	mc.Delegate = delegate{g}
	mc.Events = events{g}
	mc.Merge = merger{g}
	mc.Alive = alive{g}
	mc.Logger = log.New(&logWriter{g.logger}, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("membership: start gossip on %s: %w", cfg.BindAddr, err)
	}
	g.ml = ml
	return g, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	if net.ParseIP(host) == nil {
		// memberlist takes IPs only: resolve a name (an IPv4 address
		// first), as it resolves now.
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return "", 0, fmt.Errorf("cannot resolve %q: %v", host, err)
		}
		ip := ips[0]
		for _, c := range ips {
			if c.To4() != nil {
				ip = c
				break
			}
		}
		host = ip.String()
	}
	return host, port, nil
}

// Addr is the address this node's gossip is reached at.
func (g *Gossip) Addr() string { return g.ml.LocalNode().Address() }

// Join contacts the nodes at addrs (gossip addresses) and merges their
// view of the pool with this node's. It returns how many answered; an
// error only if none did.
func (g *Gossip) Join(addrs []string) (int, error) {
	return g.ml.Join(addrs)
}

// Self returns what this node gossips.
func (g *Gossip) Self() Member {
	addr := g.Addr() // memberlist's lock, never under g.mu (see the delegates)
	g.mu.Lock()
	defer g.mu.Unlock()
	m := g.self
	m.GossipAddr, m.leaving = addr, false
	return m
}

// Update changes what this node gossips (by f, which must not call into
// Gossip) and spreads it.
func (g *Gossip) Update(f func(*Member)) error {
	g.mu.Lock()
	before := g.self
	f(&g.self)
	g.self.ID = before.ID // the id is the node's name in the pool: fixed
	changed := g.self != before
	g.mu.Unlock()
	if !changed {
		return nil
	}
	// UpdateNode waits for the news to be sent; with nobody to send it to
	// it times out harmlessly.
	if err := g.ml.UpdateNode(time.Second); err != nil && !strings.Contains(err.Error(), "timeout") {
		return err
	}
	return nil
}

// Members returns every node this one has seen, this one included, with
// its state: alive, dead or left (dead and left ones are kept for a day).
// (A node memberlist merely suspects shows alive until it is found dead.)
func (g *Gossip) Members() []Member {
	self := g.Self()
	g.mu.Lock()
	defer g.mu.Unlock()
	self.State = StateAlive
	out := []Member{self}
	for _, r := range g.members {
		if r.m.ID == g.self.ID {
			continue
		}
		out = append(out, r.m)
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Lookup returns node id's record and state.
func (g *Gossip) Lookup(id uint64) (Member, bool) {
	g.mu.Lock()
	isSelf := id == g.self.ID
	r, ok := g.members[id]
	g.mu.Unlock()
	switch {
	case isSelf:
		m := g.Self()
		m.State = StateAlive
		return m, true
	case ok:
		return r.m, true
	}
	return Member{}, false
}

// SetKeys replaces the gossip keys (a rotation): the first encrypts from
// now on, all are accepted. Gossip must have started with keys.
func (g *Gossip) SetKeys(keys [][]byte) error {
	if g.keyring == nil {
		return errors.New("membership: gossip started without a key; a key can only be added by restarting every node with one")
	}
	if len(keys) == 0 {
		return errors.New("membership: no gossip key given")
	}
	for _, k := range keys {
		if err := g.keyring.AddKey(k); err != nil {
			return fmt.Errorf("membership: gossip key: %v", err)
		}
	}
	if err := g.keyring.UseKey(keys[0]); err != nil {
		return err
	}
	for _, old := range g.keyring.GetKeys() {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return string(k) == string(old) }) {
			if err := g.keyring.RemoveKey(old); err != nil {
				return err
			}
		}
	}
	return nil
}

// Leave tells the others that this node leaves (a graceful stop), waiting
// up to timeout, and stops gossiping. A no-op after Leave or Shutdown.
func (g *Gossip) Leave(timeout time.Duration) error {
	if g.shut.Swap(true) {
		return nil
	}
	g.mu.Lock()
	g.self.leaving = true
	g.mu.Unlock()
	_ = g.ml.UpdateNode(timeout / 2)
	err := g.ml.Leave(timeout / 2)
	return errors.Join(err, g.ml.Shutdown())
}

// Shutdown stops gossiping at once; the others will find this node dead.
func (g *Gossip) Shutdown() error {
	g.shut.Store(true)
	return g.ml.Shutdown()
}

// check refuses a node that is no keystore node or belongs to another
// cluster than this one.
func (g *Gossip) check(n *memberlist.Node) (Member, error) {
	m, err := decodeMeta(n)
	if err != nil {
		return m, err
	}
	g.mu.Lock()
	own := g.self.ClusterID
	g.mu.Unlock()
	if own != 0 && m.ClusterID != 0 && m.ClusterID != own {
		return m, fmt.Errorf("membership: node %s (%q) belongs to cluster %x, this node to cluster %x", n.Name, m.Name, m.ClusterID, own)
	}
	return m, nil
}

// seen records node n's record and state: alive, or gone (a failure,
// or a graceful stop if it said it was leaving).
func (g *Gossip) seen(n *memberlist.Node, gone bool) {
	m, err := decodeMeta(n)
	if err != nil {
		return
	}
	switch {
	case !gone:
		m.State = StateAlive
	case m.leaving:
		m.State = StateLeft
	default:
		m.State = StateDead
	}
	m.leaving = false
	now := time.Now()
	g.mu.Lock()
	if m.ID != g.self.ID {
		r, ok := g.members[m.ID]
		if !ok || r.m != m {
			g.members[m.ID] = &record{m: m, since: now}
		}
	}
	for id, r := range g.members {
		if (r.m.State == StateDead || r.m.State == StateLeft) && now.Sub(r.since) > forgetAfter {
			delete(g.members, id)
		}
	}
	g.mu.Unlock()
	if g.notify != nil {
		g.notify()
	}
}

// The memberlist delegates. They run on memberlist's goroutines, some
// under its locks: they take only g.mu and never call into memberlist.
type (
	delegate struct{ g *Gossip }
	events   struct{ g *Gossip }
	merger   struct{ g *Gossip }
	alive    struct{ g *Gossip }
)

func (d delegate) NodeMeta(limit int) []byte {
	d.g.mu.Lock()
	b := encodeMeta(d.g.self)
	d.g.mu.Unlock()
	if len(b) > limit {
		return nil // memberlist refuses it; addresses this long are a misconfiguration
	}
	return b
}
func (delegate) NotifyMsg([]byte)                {}
func (delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (delegate) LocalState(bool) []byte          { return nil }
func (delegate) MergeRemoteState([]byte, bool)   {}
func (e events) NotifyJoin(n *memberlist.Node)   { e.g.seen(n, false) }
func (e events) NotifyLeave(n *memberlist.Node)  { e.g.seen(n, true) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.g.seen(n, false) }
func (a alive) NotifyAlive(n *memberlist.Node) error {
	_, err := a.g.check(n)
	return err
}

// NotifyMerge refuses to merge with a pool that holds a node of another
// cluster (or no keystore node): two clusters' pools never become one.
func (m merger) NotifyMerge(peers []*memberlist.Node) error {
	for _, n := range peers {
		if _, err := m.g.check(n); err != nil {
			m.g.logger.Warn("refused to merge with a gossip pool", "reason", err)
			return err
		}
	}
	return nil
}

// logWriter turns memberlist's "[LEVEL] memberlist: ..." lines into slog
// records.
type logWriter struct{ l *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	s := strings.TrimSpace(string(p))
	lvl := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if rest, ok := strings.CutPrefix(s, prefix); ok {
			s, lvl = strings.TrimSpace(rest), l
		}
	}
	s = strings.TrimPrefix(s, "memberlist: ")
	w.l.Log(context.Background(), lvl, s, "component", "gossip")
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)

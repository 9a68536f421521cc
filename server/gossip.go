package server

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keystore-dev/keystore/membership"
)

// Gossip (package membership) runs beside Raft when Config.GossipAddr is
// set. It advises, Raft decides: it finds a cluster to join (Join then
// lists gossip addresses), agrees on the first members of a new one
// (BootstrapExpect), tells the transport where a member is now (peerBook),
// and shows which members it finds failed (member list, Status). It never
// changes the voters.

// gossiper starts this node's gossip once its id is known.
type gossiper struct {
	cfg    Config
	logger *slog.Logger
	g      *membership.Gossip
	// changed is signalled (without blocking) when gossip learnt
	// something; the gossip loop refreshes the transport's addresses.
	changed chan struct{}
}

func newGossiper(cfg Config, logger *slog.Logger) *gossiper {
	return &gossiper{cfg: cfg, logger: logger, changed: make(chan struct{}, 1)}
}

// start starts gossiping as node id of cluster (0: none yet) and joins
// the seeds in Config.Join, retrying in the background if none answers.
// It is a no-op without Config.GossipAddr, and after the first call.
func (gs *gossiper) start(id, cluster uint64) (*membership.Gossip, error) {
	if gs.cfg.GossipAddr == "" || gs.g != nil {
		return gs.g, nil
	}
	g, err := membership.Start(membership.Config{
		Self: membership.Member{
			ID: id, Name: gs.cfg.Name, ClusterID: cluster,
			PeerAddr: gs.cfg.advertisedPeerAddr(), ClientAddr: gs.cfg.advertisedClientAddr(),
			BootstrapExpect: gs.cfg.BootstrapExpect,
		},
		BindAddr:      gs.cfg.GossipAddr,
		AdvertiseAddr: gs.cfg.AdvertiseGossipAddr,
		Keys:          gs.cfg.GossipKeys,
		Fast:          gs.cfg.GossipFast,
		OnChange: func() {
			select {
			case gs.changed <- struct{}{}:
			default:
			}
		},
		Logger: gs.logger,
	})
	if err != nil {
		return nil, err
	}
	gs.g = g
	gs.logger.Info("gossiping", "addr", g.Addr())
	if len(gs.cfg.Join) > 0 {
		if _, err := g.Join(gs.cfg.Join); err != nil {
			gs.logger.Warn("no gossip seed answered yet; retrying", "seeds", strings.Join(gs.cfg.Join, ","), "err", err)
		}
	}
	return g, nil
}

// rejoinEvery is how often a node that sees no other gossips to its
// seeds again (a node started before its seeds, or cut off and healed).
const rejoinEvery = 2 * time.Second

// stop leaves the pool (graceful) or just stops gossiping.
func (gs *gossiper) stop(graceful bool) {
	if gs.g == nil {
		return
	}
	if graceful {
		_ = gs.g.Leave(time.Second)
	} else {
		_ = gs.g.Shutdown()
	}
}

// alone reports whether gossip sees no other live node.
func alone(g *membership.Gossip) bool {
	self := g.Self().ID
	for _, m := range g.Members() {
		if m.ID != self && m.State == membership.StateAlive {
			return false
		}
	}
	return true
}

// clusterEndpoints waits (up to joinTimeout) until gossip shows live
// members of a cluster with client addresses, and returns those
// addresses: where a joining node asks to be added. want, if not 0, is
// the only cluster accepted (a node that knows which one it joined).
func clusterEndpoints(gs *gossiper, want uint64) ([]string, error) {
	deadline := time.Now().Add(joinTimeout)
	for {
		byCluster := map[uint64][]string{}
		for _, m := range gs.g.Members() {
			if m.State == membership.StateAlive && m.ClusterID != 0 && m.ClientAddr != "" && (want == 0 || m.ClusterID == want) {
				byCluster[m.ClusterID] = append(byCluster[m.ClusterID], m.ClientAddr)
			}
		}
		switch len(byCluster) {
		case 0:
		case 1:
			for _, eps := range byCluster {
				sort.Strings(eps)
				return eps, nil
			}
		default:
			var ids []string
			for id := range byCluster {
				ids = append(ids, fmt.Sprintf("%x", id))
			}
			slices.Sort(ids)
			return nil, fmt.Errorf("server: gossip shows members of several clusters (%s): give --join the gossip addresses of one", strings.Join(ids, ", "))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("server: no member of a cluster found by gossip through %s within %s", strings.Join(gs.cfg.Join, ","), joinTimeout)
		}
		if alone(gs.g) && len(gs.cfg.Join) > 0 {
			_, _ = gs.g.Join(gs.cfg.Join)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bootstrapByGossip waits until BootstrapExpect nodes found each other
// and agreed (membership.NextBootstrapStep), then returns how this node
// starts: bootstrapping the agreed cluster, or joining one found instead.
// It waits as long as it takes (a node started before the others), saying
// so in its log now and then.
func bootstrapByGossip(cfg Config, id *identity, gs *gossiper, logger *slog.Logger) (*startup, error) {
	g := gs.g
	var proposed []membership.Member
	lastLog := time.Now()
	for {
		members := g.Members()
		step := membership.NextBootstrapStep(g.Self(), proposed, members, cfg.BootstrapExpect)
		switch {
		case step.Join != 0:
			logger.Info("bootstrap-expect: a cluster exists; joining it", "cluster", fmt.Sprintf("%x", step.Join))
			id.Expecting, id.Joining = false, true
			if err := id.save(cfg.fs(), cfg.DataDir); err != nil {
				return nil, err
			}
			return joinCluster(cfg, id, logger, func() ([]string, error) { return clusterEndpoints(gs, step.Join) })
		case step.Propose != nil:
			proposed = step.Propose
			h := membership.SetID(memberIDs(proposed))
			if err := g.Update(func(m *membership.Member) { m.Proposal = h }); err != nil {
				return nil, err
			}
			logger.Info("bootstrap-expect: proposing a cluster", "members", memberNames(proposed))
		case step.Bootstrap:
			st := &startup{id: id, peers: map[uint64]string{}, names: map[uint64]string{}}
			for _, p := range proposed {
				st.names[p.ID] = p.Name
				st.peers[p.ID] = p.PeerAddr
			}
			st.peers[id.NodeID] = cfg.advertisedPeerAddr()
			id.ClusterID, id.Expecting = membership.SetID(memberIDs(proposed)), false
			if err := id.save(cfg.fs(), cfg.DataDir); err != nil {
				return nil, err
			}
			logger.Info("bootstrap-expect: all agreed; bootstrapping", "cluster", fmt.Sprintf("%x", id.ClusterID), "members", memberNames(proposed))
			return st, nil
		}
		if time.Since(lastLog) > 10*time.Second {
			lastLog = time.Now()
			logger.Info("bootstrap-expect: waiting for the others", "expect", cfg.BootstrapExpect, "seen", len(members), "proposed", memberNames(proposed))
		}
		if alone(g) && len(cfg.Join) > 0 {
			_, _ = g.Join(cfg.Join)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func memberIDs(ms []membership.Member) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func memberNames(ms []membership.Member) string {
	var names []string
	for _, m := range ms {
		names = append(names, m.Name)
	}
	return strings.Join(names, ",")
}

// gossipLoop runs while the node serves: it points the transport at the
// addresses gossip learns, gossips this node's role as it changes, and
// gossips to the seeds again while it sees nobody.
func (s *Server) gossipLoop() {
	g := s.gossip.g
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastJoin := time.Now()
	for {
		select {
		case <-s.stopping:
			return
		case <-s.node.Done():
			return
		case <-s.gossip.changed:
			s.node.RefreshPeers()
		case <-t.C:
			role := membership.RoleNone
			for _, m := range s.node.Members() {
				if m.ID == s.node.ID() {
					role = membership.RoleVoter
					if m.Learner {
						role = membership.RoleLearner
					}
				}
			}
			_ = g.Update(func(m *membership.Member) { m.Role, m.ClusterID = role, s.clusterID })
			if len(s.cfg.Join) > 0 && time.Since(lastJoin) > rejoinEvery && alone(g) {
				lastJoin = time.Now()
				_, _ = g.Join(s.cfg.Join)
			}
		}
	}
}

// gossipState is member id's state as gossip sees it ("" without gossip).
func (s *Server) gossipState(id uint64) string {
	if s.gossip.g == nil {
		return ""
	}
	m, ok := s.gossip.g.Lookup(id)
	if !ok {
		return membership.StateUnknown.String()
	}
	return m.State.String()
}

// SetGossipKeys replaces the gossip keys (a rotation; see
// ReadGossipKeys).
func (s *Server) SetGossipKeys(keys [][]byte) error {
	if s.gossip.g == nil {
		return fmt.Errorf("server: gossip is off")
	}
	return s.gossip.g.SetKeys(keys)
}

// ReadGossipKeys reads a gossip key file: one base64 key (16, 24 or 32
// bytes) per line, the first the one that encrypts, the others accepted
// too; blank lines and lines starting with # are ignored.
func ReadGossipKeys(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
			return nil, fmt.Errorf("gossip key file %s, line %d: want a base64 key of 16, 24 or 32 bytes", path, n)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("gossip key file %s holds no key", path)
	}
	return keys, nil
}

// peerBook chooses the address this node dials a member at
// (raftnode.Config.Resolve): a route given for the member's name wins
// (a proxy or NAT in between), then the address the member itself
// gossips while gossip finds it alive (it may have restarted elsewhere;
// a dead or silent one's gossip is never used, so stale gossip cannot
// replace a live address), then the log's.
type peerBook struct {
	routes  map[string]string
	gossip  atomic.Pointer[membership.Gossip]
	cluster uint64
}

func (b *peerBook) resolve(id uint64, name, addr string) string {
	if r, ok := b.routes[name]; ok && name != "" {
		return r
	}
	if g := b.gossip.Load(); g != nil {
		if m, ok := g.Lookup(id); ok && m.State == membership.StateAlive && m.ClusterID == b.cluster && m.PeerAddr != "" {
			return m.PeerAddr
		}
	}
	return addr
}

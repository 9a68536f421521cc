package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keystore-dev/keystore/entry"
	peerv1 "github.com/keystore-dev/keystore/proto/keystore/peer/v1"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"github.com/keystore-dev/keystore/storage"
	"go.etcd.io/raft/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// How a node starts. The log decides membership: a node that has state
// takes its peers from it (raftnode), whatever --initial-cluster says now.
// A node with an empty data dir either bootstraps a new cluster from
// --initial-cluster (InitialClusterState "new", the default), having made
// sure that no member of it has run before, or joins an existing one
// (Join): it chooses an id, asks a member to add it as a learner, and
// starts empty, to be sent the log. Its identity (identity.go) is written
// before either, so a crash in between starts the same way again.

// Initial cluster states (Config.InitialClusterState), as etcd's.
const (
	ClusterStateNew      = "new"
	ClusterStateExisting = "existing"
)

// helloTimeout bounds a Hello before bootstrapping.
const helloTimeout = 500 * time.Millisecond

// joinTimeout bounds how long a joining node keeps asking to be added.
const joinTimeout = 30 * time.Second

// startup is what resolveIdentity decides.
type startup struct {
	id    *identity
	peers map[uint64]string // the members' peer addresses, this node's included
	names map[uint64]string // their names, for the bootstrap's conf changes
	join  bool              // start empty and wait for the log
}

// resolveIdentity works out who this node is and how it starts (see
// above), writing its identity the first time.
func resolveIdentity(cfg Config, store *storage.Store, logger *slog.Logger, gs *gossiper) (*startup, error) {
	fs := cfg.fs()
	id, err := loadIdentity(fs, cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if id != nil && id.Name != cfg.Name {
		return nil, fmt.Errorf("server: the data dir %s belongs to member %q, not %q", cfg.DataDir, id.Name, cfg.Name)
	}
	empty, err := storeEmpty(store)
	if err != nil {
		return nil, err
	}
	self := cfg.advertisedPeerAddr()
	if self == "" {
		self = cfg.PeerAddr // its own; peers learn it from the log
	}
	switch {
	case id != nil && id.Expecting:
		// Waiting for --bootstrap-expect's others when it stopped: wait
		// again, under the same id.
		if _, err := gs.start(id.NodeID, 0); err != nil {
			return nil, err
		}
		return bootstrapByGossip(cfg, id, gs, logger)
	case id != nil && (id.Joining || id.Joined && empty):
		// A join that did not finish, or one that finished but crashed
		// before any of the log arrived: ask again, under the same id.
		return joinCluster(cfg, id, logger, joinEndpoints(cfg, gs, id))
	case id != nil:
		// The addresses the log has, over those of the initial cluster for
		// a member of it (for members that have not published theirs, and
		// for state from before members were kept); raftnode then keeps
		// only the members the log names.
		st := &startup{id: id, peers: map[uint64]string{}}
		if !id.Joined {
			st.peers, st.names = initialPeers(cfg)
		}
		for _, m := range store.Members() {
			if m.GetPeerAddress() != "" {
				st.peers[m.GetId()] = m.GetPeerAddress()
			}
		}
		st.peers[id.NodeID] = self
		return st, nil
	case !empty:
		// A data dir from before identities were kept: the id and cluster
		// id are derived from the names, as they were then.
		id = &identity{NodeID: raftnode.IDFromName(cfg.Name), ClusterID: initialClusterID(cfg), Name: cfg.Name}
		if err := id.save(fs, cfg.DataDir); err != nil {
			return nil, err
		}
		peers, names := initialPeers(cfg)
		return &startup{id: id, peers: peers, names: names}, nil
	case cfg.BootstrapExpect > 0:
		id = &identity{NodeID: newNodeID(), Name: cfg.Name, Expecting: true}
		if err := id.save(fs, cfg.DataDir); err != nil {
			return nil, err
		}
		if _, err := gs.start(id.NodeID, 0); err != nil {
			return nil, err
		}
		return bootstrapByGossip(cfg, id, gs, logger)
	case len(cfg.Join) > 0 && (cfg.GossipAddr == "" || cfg.InitialClusterState == ClusterStateExisting || !namesSelf(cfg)):
		// (With gossip, Join lists gossip seeds, which every node may be
		// given: a node of the initial cluster bootstraps it all the same.)
		id = &identity{NodeID: newNodeID(), Name: cfg.Name, Joining: true}
		if err := id.save(fs, cfg.DataDir); err != nil {
			return nil, err
		}
		return joinCluster(cfg, id, logger, joinEndpoints(cfg, gs, id))
	case cfg.InitialClusterState == ClusterStateExisting:
		return nil, errors.New("server: the data dir is empty and the initial cluster state is existing: give --join to join the cluster")
	default:
		id = &identity{NodeID: raftnode.IDFromName(cfg.Name), ClusterID: initialClusterID(cfg), Name: cfg.Name}
		if err := checkNotStarted(cfg, id, logger); err != nil {
			return nil, err
		}
		if err := id.save(fs, cfg.DataDir); err != nil {
			return nil, err
		}
		peers, names := initialPeers(cfg)
		return &startup{id: id, peers: peers, names: names}, nil
	}
}

func namesSelf(cfg Config) bool {
	_, ok := cfg.InitialCluster[cfg.Name]
	return ok
}

// joinEndpoints returns where a joining node asks to be added: the client
// addresses in Join, or with gossip those of the members it finds.
func joinEndpoints(cfg Config, gs *gossiper, id *identity) func() ([]string, error) {
	if cfg.GossipAddr == "" {
		return func() ([]string, error) { return cfg.Join, nil }
	}
	return func() ([]string, error) {
		if _, err := gs.start(id.NodeID, 0); err != nil {
			return nil, err
		}
		want := uint64(0)
		if id.Joined {
			want = id.ClusterID
		}
		return clusterEndpoints(gs, want)
	}
}

func storeEmpty(store *storage.Store) (bool, error) {
	hs, _, err := store.InitialState()
	if err != nil {
		return false, err
	}
	last, err := store.LastIndex()
	if err != nil {
		return false, err
	}
	return raft.IsEmptyHardState(hs) && last == 0 && store.AppliedIndex() == 0, nil
}

func initialPeers(cfg Config) (peers, names map[uint64]string) {
	peers, names = make(map[uint64]string), make(map[uint64]string)
	for name, addr := range cfg.InitialCluster {
		id := raftnode.IDFromName(name)
		peers[id], names[id] = addr, name
	}
	return peers, names
}

func initialClusterID(cfg Config) uint64 {
	token := cfg.ClusterToken
	if token == "" {
		token = "keystore"
	}
	return raftnode.ClusterIDFor(token, slices.Collect(maps.Keys(cfg.InitialCluster)))
}

// checkNotStarted refuses to bootstrap when a member of the initial
// cluster reports that this node has run in the cluster before (it
// published its client address) or is no member any more: its data dir
// is empty because its data was lost, and a node that forgot its votes
// and acknowledgements must not take part under its old identity. It must
// join again under a new id (the replace runbook). Peers that do not
// answer within helloTimeout are not waited for: at a first start they may
// not run yet (a running node answers in a round trip).
func checkNotStarted(cfg Config, id *identity, logger *slog.Logger) error {
	var (
		mu     sync.Mutex
		reason string
		wg     sync.WaitGroup
	)
	for name, addr := range cfg.InitialCluster {
		if name == cfg.Name {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := hello(addr, id, cfg.PeerTLS)
			if err != nil || resp.GetClusterId() != id.ClusterID {
				return
			}
			why := ""
			switch {
			case resp.GetStarted():
				why = fmt.Sprintf("member %s reports that %q has run in this cluster before", name, cfg.Name)
			case resp.GetMembers() > 0 && !resp.GetMember() && resp.GetAppliedIndex() > uint64(len(cfg.InitialCluster)):
				why = fmt.Sprintf("member %s does not count %q a member any more", name, cfg.Name)
			}
			if why != "" {
				mu.Lock()
				reason = why
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if reason != "" {
		return fmt.Errorf("server: refusing to bootstrap with an empty data dir: %s. Its data was lost: remove it (keystorectl member remove) and join it again with an empty data dir and --join, under a new id", reason)
	}
	logger.Info("no member of the initial cluster has seen this node run before: bootstrapping")
	return nil
}

// hello asks the node at peer address addr about its cluster.
func hello(addr string, id *identity, pt *raftnode.PeerTLS) (*peerv1.HelloResponse, error) {
	creds := insecure.NewCredentials()
	if pt != nil {
		// The member's name is not known here: the chain is checked.
		creds = credentials.NewTLS(pt.Client(""))
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), helloTimeout)
	defer cancel()
	return peerv1.NewPeerServiceClient(conn).Hello(ctx, &peerv1.HelloRequest{ClusterId: id.ClusterID, From: id.NodeID})
}

// joinCluster asks the members at the client addresses endpoints gives
// to add this node as a learner, under the id it chose, until one does;
// then this node starts empty and is sent the log.
func joinCluster(cfg Config, id *identity, logger *slog.Logger, endpoints func() ([]string, error)) (*startup, error) {
	if cfg.advertisedPeerAddr() == "" {
		return nil, errors.New("server: to join, this node must tell the others its peer address: --peer-addr listens on every interface, so give --advertise-peer-addr")
	}
	eps, err := endpoints()
	if err != nil {
		return nil, err
	}
	req := &keystorev1.MemberAddRequest{Name: cfg.Name, PeerAddress: cfg.advertisedPeerAddr(), ClientAddress: cfg.advertisedClientAddr(), Id: fmt.Sprintf("%x", id.NodeID)}
	deadline := time.Now().Add(joinTimeout)
	var lastErr error
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		for _, ep := range eps {
			resp, err := memberAdd(ep, req, cfg.JoinDialOptions)
			if err == nil {
				clusterID, err := strconv.ParseUint(resp.GetClusterId(), 16, 64)
				if err != nil {
					return nil, fmt.Errorf("server: join: bad cluster id %q from %s", resp.GetClusterId(), ep)
				}
				id.ClusterID, id.Joining, id.Joined = clusterID, false, true
				if err := id.save(cfg.fs(), cfg.DataDir); err != nil {
					return nil, err
				}
				st := &startup{id: id, peers: map[uint64]string{id.NodeID: req.PeerAddress}, names: map[uint64]string{}, join: true}
				for _, m := range resp.GetMembers() {
					mid, err := strconv.ParseUint(m.GetId(), 16, 64)
					if err == nil && m.GetPeerAddress() != "" {
						// The names too, so that routes by name apply
						// before the log arrives.
						st.peers[mid], st.names[mid] = m.GetPeerAddress(), m.GetName()
					}
				}
				logger.Info("added to the cluster as a learner", "via", ep, "id", fmt.Sprintf("%x", id.NodeID), "members", len(st.peers))
				return st, nil
			}
			lastErr = fmt.Errorf("%s: %w", ep, err)
			if s, ok := status.FromError(err); ok && (s.Code() == codes.FailedPrecondition || s.Code() == codes.InvalidArgument) {
				return nil, fmt.Errorf("server: join refused by %s: %s", ep, s.Message())
			}
		}
		time.Sleep(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second))
	}
	return nil, fmt.Errorf("server: could not join through %s: %w", strings.Join(eps, ","), lastErr)
}

func memberAdd(endpoint string, req *keystorev1.MemberAddRequest, dial []grpc.DialOption) (*keystorev1.MemberAddResponse, error) {
	if len(dial) == 0 {
		dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(endpoint, dial...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, maxClusterVersionHeader, strconv.FormatUint(uint64(entry.ClusterVersion), 10))
	return keystorev1.NewClusterServiceClient(conn).MemberAdd(ctx, req)
}

// publishLoop records in the log, once it can, that this node started,
// with its name and addresses (an UpdateMember conf change), unless the
// log has them already: the bootstrap's entries carry names only (each
// member may have been given others' addresses differently), and a node
// may come back on new addresses. It ends once done or when the node
// stops.
func (s *Server) publishLoop() {
	self := s.node.ID()
	for {
		var want *statev1.Member
		for _, m := range s.store.Members() {
			if m.GetId() == self {
				want = proto.Clone(m).(*statev1.Member)
			}
		}
		if want != nil {
			cur := proto.Clone(want)
			want.Name, want.Started = s.cfg.Name, true
			if a := s.cfg.advertisedPeerAddr(); a != "" {
				want.PeerAddress = a
			}
			if a := s.cfg.advertisedClientAddr(); a != "" {
				want.ClientAddress = a
			}
			if proto.Equal(cur, want) {
				return
			}
		}
		if want != nil && s.node.Leader() != 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := s.node.UpdateMember(ctx, want)
			cancel()
			if err == nil {
				s.logger.Info("published this member", "peer_addr", want.PeerAddress, "client_addr", want.ClientAddress)
				return
			}
			s.logger.Debug("publishing this member failed; retrying", "err", err)
		}
		select {
		case <-s.stopping:
			return
		case <-s.node.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// advertisedPeerAddr is the peer address this node gives others:
// AdvertisePeerAddr, else the one it listens on unless that is every
// interface's (0.0.0.0, [::]), which names no host ("" then).
func (c Config) advertisedPeerAddr() string {
	if c.AdvertisePeerAddr != "" {
		return c.AdvertisePeerAddr
	}
	if c.PeerListener != nil {
		return specific(c.PeerListener.Addr().String())
	}
	return specific(c.PeerAddr)
}

// advertisedClientAddr is the client address this node gives others, by
// the same rule.
func (c Config) advertisedClientAddr() string {
	if c.AdvertiseClientAddr != "" {
		return c.AdvertiseClientAddr
	}
	if c.ClientListener != nil {
		return specific(c.ClientListener.Addr().String())
	}
	return specific(c.ClientAddr)
}

// specific returns addr, or "" if its host is missing or unspecified.
func specific(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return ""
	}
	return addr
}

// MemberList implements ClusterService.MemberList.
func (c clusterService) MemberList(context.Context, *keystorev1.MemberListRequest) (*keystorev1.MemberListResponse, error) {
	return &keystorev1.MemberListResponse{Members: c.s.memberViews(), ClusterId: fmt.Sprintf("%x", c.s.clusterID)}, nil
}

// MemberAdd implements ClusterService.MemberAdd.
func (c clusterService) MemberAdd(ctx context.Context, req *keystorev1.MemberAddRequest) (*keystorev1.MemberAddResponse, error) {
	var v []string
	if req.GetName() == "" || len(req.GetName()) > 64 {
		v = append(v, "name: must be 1-64 characters")
	}
	if _, _, err := net.SplitHostPort(req.GetPeerAddress()); err != nil {
		v = append(v, "peer_address: must be host:port")
	}
	if a := req.GetClientAddress(); a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			v = append(v, "client_address: must be host:port or empty")
		}
	}
	id := newNodeID()
	if req.GetId() != "" {
		var err error
		if id, err = strconv.ParseUint(req.GetId(), 16, 64); err != nil || id == 0 {
			v = append(v, "id: must be a non-zero hex number or empty")
		}
	}
	if len(v) > 0 {
		return nil, status.Error(codes.InvalidArgument, strings.Join(v, "; "))
	}
	// Judge names by the membership as of now, not as this node applied it
	// so far: a removal the leader applied a moment ago (a replace: remove,
	// then join under the old name) must count. Likewise the cluster
	// version.
	if err := c.s.node.ReadIndex(ctx); err != nil {
		return nil, membershipStatus(err)
	}
	if err := checkJoinerVersion(ctx, req, c.s.node.ClusterVersion()); err != nil {
		return nil, err
	}
	for _, m := range c.s.store.Members() {
		if m.GetName() != req.GetName() || m.GetId() == id {
			continue
		}
		if !m.GetLearner() || m.GetPeerAddress() != req.GetPeerAddress() {
			return nil, status.Errorf(codes.FailedPrecondition, "a member named %q exists (id %x): remove it first, or choose another name", m.GetName(), m.GetId())
		}
		// A learner of this name and peer address (added by keystorectl
		// member add, or a join that was never finished): the node that
		// joins now takes its place under its own id. Removing a learner
		// never affects the quorum, and the joining node's id is fresh,
		// so no id is reused.
		if err := c.s.node.RemoveMember(ctx, m.GetId()); err != nil {
			return nil, membershipStatus(err)
		}
	}
	m := &statev1.Member{Id: id, Name: req.GetName(), PeerAddress: req.GetPeerAddress(), ClientAddress: req.GetClientAddress()}
	if err := c.s.node.AddLearner(ctx, m); err != nil {
		return nil, membershipStatus(err)
	}
	views := c.s.memberViews()
	var added *keystorev1.Member
	for _, mv := range views {
		if mv.GetId() == fmt.Sprintf("%x", id) {
			added = mv
		}
	}
	if added == nil { // applied on the leader, not here yet
		added = &keystorev1.Member{Id: fmt.Sprintf("%x", id), Name: m.Name, PeerAddress: m.PeerAddress, ClientAddress: m.ClientAddress, IsLearner: true}
		views = append(views, added)
	}
	return &keystorev1.MemberAddResponse{Member: added, Members: views, ClusterId: fmt.Sprintf("%x", c.s.clusterID)}, nil
}

// maxClusterVersionHeader is the gRPC metadata in which a joining node's
// MemberAdd says the highest cluster version its binary applies.
const maxClusterVersionHeader = "keystore-max-cluster-version"

// checkJoinerVersion refuses (FAILED_PRECONDITION, naming the versions)
// the MemberAdd of a node that supports less than the cluster version cv:
// it could not apply the log. A joining keystored always names its id and
// says its version (maxClusterVersionHeader); one that names its id and
// says nothing is from before cluster versions, so supports 1. A request
// without an id (keystorectl member add, before the node starts) is not
// judged: the node's own join is.
func checkJoinerVersion(ctx context.Context, req *keystorev1.MemberAddRequest, cv uint32) error {
	if req.GetId() == "" {
		return nil
	}
	supports := entry.MinClusterVersion
	md, _ := metadata.FromIncomingContext(ctx)
	if vs := md.Get(maxClusterVersionHeader); len(vs) > 0 {
		v, err := strconv.ParseUint(vs[0], 10, 32)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "%s: %q is no version", maxClusterVersionHeader, vs[0])
		}
		supports = entry.EffectiveVersion(uint32(v))
	}
	if supports < cv {
		return status.Errorf(codes.FailedPrecondition, "the cluster is at cluster version %d and the joining node's keystored supports cluster versions up to %d: run a newer keystored on it (docs/upgrade.md)", cv, supports)
	}
	return nil
}

// MemberPromote implements ClusterService.MemberPromote.
func (c clusterService) MemberPromote(ctx context.Context, req *keystorev1.MemberPromoteRequest) (*keystorev1.MemberPromoteResponse, error) {
	id, err := parseMemberID(req.GetId())
	if err != nil {
		return nil, err
	}
	if err := c.s.node.Promote(ctx, id); err != nil {
		return nil, membershipStatus(err)
	}
	return &keystorev1.MemberPromoteResponse{Members: c.s.memberViews()}, nil
}

// MemberRemove implements ClusterService.MemberRemove.
func (c clusterService) MemberRemove(ctx context.Context, req *keystorev1.MemberRemoveRequest) (*keystorev1.MemberRemoveResponse, error) {
	id, err := parseMemberID(req.GetId())
	if err != nil {
		return nil, err
	}
	if err := c.s.node.RemoveMember(ctx, id); err != nil {
		return nil, membershipStatus(err)
	}
	return &keystorev1.MemberRemoveResponse{Members: c.s.memberViews()}, nil
}

func parseMemberID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 16, 64)
	if err != nil || id == 0 {
		return 0, status.Errorf(codes.InvalidArgument, "id: must be a member's id in hex (got %q)", s)
	}
	return id, nil
}

// membershipStatus maps a membership change's error to a gRPC status.
func membershipStatus(err error) error {
	switch {
	case errors.Is(err, raftnode.ErrMembership):
		return status.Error(codes.FailedPrecondition, strings.TrimPrefix(err.Error(), raftnode.ErrMembership.Error()+": "))
	case errors.Is(err, raftnode.ErrRemoved):
		return status.Error(codes.Unavailable, "this node was removed from the cluster")
	case errors.Is(err, raftnode.ErrStopped):
		return status.Error(codes.Unavailable, "the node is stopping")
	default:
		return status.Error(codes.Unavailable, "no quorum confirmed the change in time; it may still apply: check member list")
	}
}

// memberViews lists the members as the log knows them (the initial
// cluster for a state from before members were kept), with each one's
// role from this node's raft configuration.
func (s *Server) memberViews() []*keystorev1.Member {
	st := s.node.Status()
	roles := make(map[uint64]raftnode.MemberStatus)
	for _, m := range s.node.Members() {
		roles[m.ID] = m
	}
	var out []*keystorev1.Member
	members := s.store.Members()
	if len(members) == 0 {
		for name, addr := range s.cfg.InitialCluster {
			members = append(members, &statev1.Member{Id: raftnode.IDFromName(name), Name: name, PeerAddress: addr})
		}
	}
	for _, m := range members {
		r, ok := roles[m.GetId()]
		if !ok {
			continue // removed in raft's view already, not yet in the state's
		}
		peer := m.GetPeerAddress()
		if peer == "" {
			peer = s.startPeers[m.GetId()] // not published yet: as this node was told
		}
		out = append(out, &keystorev1.Member{
			Name: m.GetName(), Id: fmt.Sprintf("%x", m.GetId()), PeerAddress: peer, ClientAddress: m.GetClientAddress(),
			IsLeader: m.GetId() == st.Leader, IsLearner: r.Learner, MatchIndex: r.Match,
			GossipState: s.gossipState(m.GetId()),
		})
	}
	slices.SortFunc(out, func(a, b *keystorev1.Member) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

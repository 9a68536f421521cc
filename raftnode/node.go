package raftnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keystore-dev/keystore/entry"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// LogStore is the durable Raft log the node writes through. raft.Storage is
// the read side raft itself uses.
type LogStore interface {
	raft.Storage
	// Append persists entries and the HardState in one batch, synced when
	// sync is set.
	Append(hs raftpb.HardState, ents []raftpb.Entry, sync bool) error
	// ApplySnapshot replaces the state machine and resets the log, synced.
	ApplySnapshot(snap raftpb.Snapshot) error
	// Compact discards the log up to and including index.
	Compact(index uint64) error
	// SnapshotStore streams snapshots: ApplySnapshot installs what
	// ReceiveSnapshot staged for the snapshot's metadata.
	SnapshotStore
}

// StateMachine is what committed entries are applied to. Entries are in
// package entry's format; Apply's results follow it too (a packed entry's
// result holds one result per proposal), so that entry.Answers can route
// each to its proposer.
type StateMachine interface {
	// Apply applies entries in order, persisting the applied index (and cs,
	// if not nil) atomically with their effects. It returns one result per
	// entry, which it does not modify afterwards.
	Apply(ents []raftpb.Entry, cs *raftpb.ConfState) ([]*statev1.Result, error)
	// AppliedIndex returns the index of the last applied entry.
	AppliedIndex() uint64
	// LogTime returns the largest entry time applied (Unix nanoseconds),
	// or the installed snapshot's.
	LogTime() int64
}

// memberLister is a StateMachine that keeps the members the applied conf
// changes describe (storage does): a restarted node takes its peers from
// it, not from its configuration.
type memberLister interface {
	Members() []*statev1.Member
}

// knownPeers returns the peers a node starts with: the members its state
// machine knows, when it knows any (the log decides membership; a changed
// --initial-cluster is only a bootstrap hint), else the configured ones.
func knownPeers(self uint64, configured map[uint64]string, members []*statev1.Member, logger *slog.Logger) map[uint64]string {
	if len(members) == 0 {
		return configured
	}
	peers := make(map[uint64]string, len(members))
	for _, m := range members {
		addr := m.GetPeerAddress()
		if addr == "" {
			addr = configured[m.GetId()] // a member from before addresses were kept
		}
		if addr != "" {
			peers[m.GetId()] = addr
		}
	}
	for id, addr := range configured {
		if _, ok := peers[id]; id != self && !ok {
			logger.Warn("a configured member is no member in the log; the log wins", "member", fmt.Sprintf("%x", id), "configured", addr)
		}
	}
	return peers
}

// Errors returned by Node.
var (
	// ErrStopped is returned after Stop, or after a storage failure stopped
	// the node.
	ErrStopped = errors.New("raftnode: stopped")
	// ErrTimeout is returned when no leader committed the proposal, or
	// confirmed a read, before the context ended.
	ErrTimeout = errors.New("raftnode: no quorum before the deadline")
	// ErrOverloaded is returned when this node leads but its uncommitted
	// entries already fill MaxUncommittedBytes: no quorum keeps up with the
	// writes, and the proposal was refused rather than held in memory.
	ErrOverloaded = errors.New("raftnode: overloaded: uncommitted entries at their bound")
	// ErrRefused is returned when the leader refused a forwarded command
	// (Config.CheckForwarded): the request is invalid whoever asks again.
	ErrRefused = errors.New("raftnode: the leader refused the command")
)

// Node drives one member of the Raft group: it handles raft's Readies in a
// single goroutine (run), persists through LogStore, applies to
// StateMachine, and exchanges messages with peers through its Transport. Propose and ReadIndex are its
// seams for the rest of the server.
type Node struct {
	cfg    Config
	logger *slog.Logger
	rn     raftCore
	core   *core // rn, except in tests
	store  LogStore
	sm     StateMachine
	trans  Transport
	tcp    *tcpTransport // trans, when it is the TCP transport; else nil
	clock  *logClock

	lead atomic.Uint64
	term atomic.Uint64
	// leaderChanges counts the leaders this node saw (observeLeader).
	leaderChanges atomic.Uint64

	mu      sync.Mutex
	waiters map[uint64]chan outcome // request id → apply result
	// leaderChanged is closed (and replaced) whenever the leader changes,
	// waking proposals that may have been lost with the old leader.
	leaderChanged chan struct{}
	// appliedc is closed (and replaced) after every apply batch.
	appliedc chan struct{}
	// lastProposal is when this node last proposed (for idle ticks).
	lastProposal time.Time

	reads readQueue
	pack  packer

	compactedAt uint64 // touched only while handling a Ready (one goroutine at a time)
	leading     bool   // raft's state is StateLeader; likewise
	snapshots   atomic.Uint64

	// confSem admits one membership change at a time (membership.go);
	// removed is set once this node applied its own removal.
	confSem chan struct{}
	removed atomic.Bool
	// versionKick asks versionLoop for a check soon (clusterversion.go).
	versionKick chan struct{}
	// heard is when a frame last arrived from each peer (TransferLeadership
	// hands over only to a peer heard from lately).
	heardMu sync.RWMutex
	heard   map[uint64]*atomic.Int64
	// knownPeerIDs are the members the transport was told of (syncPeers).
	peersMu      sync.Mutex
	knownPeerIDs map[uint64]bool

	// receiving is held while a snapshot is received (one at a time);
	// installing counts snapshots being received or installed.
	receiving  sync.Mutex
	installing atomic.Int32

	stopOnce sync.Once
	haltOnce sync.Once
	halted   bool // under mu: no proposer may wait any more (see halt)
	stopc    chan struct{}
	done     sync.WaitGroup
	failed   atomic.Pointer[error]
}

// New creates a Node over store and sm. It starts a fresh cluster when the
// store is empty and restarts from the store otherwise. Call Start, then
// Stop.
func New(cfg Config, store LogStore, sm StateMachine) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Node{
		cfg:           cfg,
		logger:        cfg.Logger.With("component", "raftnode", "id", fmt.Sprintf("%x", cfg.ID)),
		store:         store,
		sm:            sm,
		waiters:       make(map[uint64]chan outcome),
		leaderChanged: make(chan struct{}),
		appliedc:      make(chan struct{}),
		stopc:         make(chan struct{}),
		confSem:       make(chan struct{}, 1),
		versionKick:   make(chan struct{}, 1),
		heard:         make(map[uint64]*atomic.Int64),
	}
	n.reads.init()
	peers := maps.Clone(cfg.Peers)
	names := make(map[uint64]string, len(cfg.Names))
	maps.Copy(names, cfg.Names)
	if ml, ok := sm.(memberLister); ok {
		peers = knownPeers(cfg.ID, peers, ml.Members(), n.logger)
		for _, m := range ml.Members() {
			if m.GetName() != "" {
				names[m.GetId()] = m.GetName()
			}
		}
	}
	for id, addr := range peers {
		if id != cfg.ID {
			if a := n.resolve(id, names[id], addr); a != "" {
				peers[id] = a
			}
		}
	}
	n.knownPeerIDs = make(map[uint64]bool, len(peers))
	for id := range peers {
		n.knownPeerIDs[id] = true
	}
	n.trans = cfg.Transport
	if n.trans == nil {
		n.tcp = newTCPTransport(cfg.ID, cfg.ClusterID, peers, cfg.CommitHold, n.logger)
		n.tcp.tls, n.tcp.nameOf = cfg.PeerTLS, n.memberName
		n.trans = n.tcp
	}
	n.clock = newLogClock(cfg.Now, time.Now, sm.LogTime())
	return n, nil
}

// Start starts Raft, the transport and the loops. On the TCP transport (the
// default) the peer port must be served (SplitPeerListener, PeerServer) for
// the node to hear from its peers.
func (n *Node) Start() error {
	rc := &raft.Config{
		ID:                        n.cfg.ID,
		ElectionTick:              n.cfg.ElectionTicks,
		HeartbeatTick:             n.cfg.HeartbeatTicks,
		Storage:                   n.store,
		Applied:                   n.sm.AppliedIndex(),
		MaxSizePerMsg:             n.cfg.MaxSizePerMsg,
		MaxInflightMsgs:           n.cfg.MaxInflightMsgs,
		MaxUncommittedEntriesSize: n.cfg.MaxUncommittedBytes,
		CheckQuorum:               true,
		PreVote:                   true,
		ReadOnlyOption:            raft.ReadOnlySafe,
		// Only the leader proposes: a follower forwards through Forward,
		// so that the leader stamps the entry's time.
		DisableProposalForwarding: true,
		Logger:                    raftLogger{n.logger},
	}
	hs, _, err := n.store.InitialState()
	if err != nil {
		return err
	}
	last, err := n.store.LastIndex()
	if err != nil {
		return err
	}
	rn, err := raft.NewRawNode(rc)
	if err != nil {
		return err
	}
	if raft.IsEmptyHardState(hs) && last == 0 && n.cfg.Join {
		n.logger.Info("joining a cluster: waiting for the leader to send the log", "members", len(n.cfg.Peers))
	} else if raft.IsEmptyHardState(hs) && last == 0 {
		// In id order: the bootstrap entries (one conf change per member,
		// its context naming the member) must be the same bytes on every
		// member, and map order is random.
		ids := slices.Sorted(maps.Keys(n.cfg.Peers))
		peers := make([]raft.Peer, 0, len(ids))
		for _, id := range ids {
			// Names and ids only: the addresses each member was given may
			// differ (a proxy, NAT), and the bootstrap's entries must be the
			// same on every member. Each publishes its own once started.
			m := &statev1.Member{Id: id, Name: n.cfg.Names[id]}
			peers = append(peers, raft.Peer{ID: id, Context: entry.ConfChangeContext(m, 0)})
		}
		n.logger.Info("starting a new cluster", "members", len(peers))
		if err := rn.Bootstrap(peers); err != nil {
			return err
		}
	} else {
		n.logger.Info("restarting", "applied", rc.Applied, "term", hs.Term, "commit", hs.Commit, "last_index", last)
	}
	n.core = newCore(rn, n.cfg.CallerReadies, n.handleReady, n.stopOnFailure)
	n.rn = n.core
	// Where the last compaction left the log (it keeps KeepEntries below
	// what was applied), not rc.Applied: a node that restarts often must
	// still compact every SnapshotEntries.
	n.compactedAt = rc.Applied
	if first, err := n.store.FirstIndex(); err == nil && first-1+n.cfg.KeepEntries < n.compactedAt {
		n.compactedAt = first - 1 + n.cfg.KeepEntries
	}
	if err := n.trans.Start(nodeLocal{n}); err != nil {
		return err
	}
	n.done.Add(6)
	go n.versionLoop()
	go n.run()
	go n.readLoop()
	go n.idleTickLoop()
	go n.promoteLoop()
	go n.removalLoop()
	return nil
}

// Stop stops the node and waits for its goroutines. Pending proposals and
// reads fail with ErrStopped.
func (n *Node) Stop() {
	n.stopOnce.Do(func() {
		n.halt()
		n.done.Wait()
		if n.core != nil { // nil: never started
			n.core.stop()
		}
		n.trans.Stop()
	})
}

// run ticks raft and pumps for peer messages until the node stops. Readies
// are handled by whichever goroutine pumps (see core), one at a time; for each Ready, in this
// order (a leader sends first, see handleReady):
//
//  1. persist: a snapshot (if any), then entries + HardState in one synced
//     batch. Nothing below may depend on them before they are durable.
//  2. send the Ready's messages (votes and appends now reflect durable
//     state).
//  3. apply the committed entries (their applied index in the same batch),
//     then answer the proposers waiting on them; answer ReadIndex requests.
//  4. compact the log if enough has been applied.
//  5. Advance.
func (n *Node) run() {
	defer n.done.Done()
	ticker := time.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			n.core.tick()
		case <-n.core.wake:
			n.core.pumpAll()
		case <-n.stopc:
			return
		}
	}
}

// stopOnFailure stops serving after handling a Ready failed: a storage
// failure leaves this node unable to keep its promises. The core already
// refuses every call; Stop still has to be called.
func (n *Node) stopOnFailure(err error) {
	n.logger.Error("stopping after storage failure", "err", err)
	n.failed.Store(&err)
	n.halt()
}

// halt stops serving (Stop, or a storage failure): every proposer waiting
// for its entry hears ErrStopped, none may start waiting any more, and
// stopc closes (the loops end; proposers and readers waiting on anything
// else return ErrStopped).
//
// NB: a waiter's channel is never closed, only sent to: a packer round
// still in flight fails its proposers onto the same channels afterwards,
// and a send on a closed channel panics. Each channel has room for one
// outcome and every send to it is non-blocking, so the first outcome wins.
func (n *Node) halt() {
	n.haltOnce.Do(func() {
		n.mu.Lock()
		n.halted = true
		for id, ch := range n.waiters {
			select {
			case ch <- outcome{err: n.stoppedErr()}:
			default:
			}
			delete(n.waiters, id)
		}
		n.mu.Unlock()
		close(n.stopc)
	})
}

func (n *Node) handleReady(rd raft.Ready) error {
	if rd.SoftState != nil {
		n.observeLeader(rd.SoftState.Lead)
		n.leading = rd.SoftState.RaftState == raft.StateLeader
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		n.term.Store(rd.HardState.Term)
	}
	// A leader sends first and persists while its appends travel (raft's
	// README, "the leader can write to its disk in parallel"): its own
	// entries count towards a commit only once Advance reports them
	// persisted, and what it sends (appends, heartbeats, read responses)
	// promises nothing about its own disk. A node that is not leader in
	// this Ready sends only after persisting: its votes and append
	// acknowledgements do promise durable state.
	//
	// After queueing messages the handler yields once (send).
	sent := false
	if n.leading {
		n.send(rd.Messages)
		sent = true
	}
	// 1. Persist.
	if !raft.IsEmptySnap(rd.Snapshot) {
		// Counted before the install, so that whoever sees the applied
		// index reach the snapshot's sees it counted; a failed install
		// stops the node.
		n.installing.Add(1)
		n.snapshots.Add(1)
		err := n.store.ApplySnapshot(rd.Snapshot)
		n.installing.Add(-1)
		if err != nil {
			n.snapshots.Add(^uint64(0))
			return fmt.Errorf("apply snapshot: %w", err)
		}
		// Log time goes on from the snapshot's, not from the entries
		// applied before it (see logClock).
		n.clock.observe(n.sm.LogTime())
		n.compactedAt = rd.Snapshot.Metadata.Index
		// The snapshot may hold conf changes this node never applied one
		// by one: its peers are the snapshot's members.
		n.syncPeers(rd.Snapshot.Metadata.ConfState)
		n.notifyApplied()
	}
	if err := n.store.Append(rd.HardState, rd.Entries, rd.MustSync); err != nil {
		return fmt.Errorf("append: %w", err)
	}
	// 2. Send.
	if !sent {
		n.send(rd.Messages)
	}
	// 3. Apply, then answer.
	if err := n.apply(rd.CommittedEntries); err != nil {
		return err
	}
	for _, rs := range rd.ReadStates {
		n.reads.resolve(rs)
	}
	// 4. Compact.
	n.maybeCompact()
	return nil
}

// send hands msgs to the transport and, unless Config.NoSenderYield,
// yields once so the peer senders just handed them run before the Ready's
// handler goes on. A goroutine woken by a channel send waits in the
// sender's P's next slot; a leader goes straight into its log write and
// fdatasync, a blocking system call during which that P runs nothing until
// the runtime takes it back. Under load the yield also delays the handler,
// so more proposals gather per Ready (docs/performance-notes.md).
func (n *Node) send(msgs []raftpb.Message) {
	n.trans.Send(msgs)
	if len(msgs) > 0 && !n.cfg.NoSenderYield {
		runtime.Gosched()
	}
}

func (n *Node) apply(ents []raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	var (
		cs  *raftpb.ConfState
		ccs []appliedConfChange
	)
	for i := range ents {
		switch ents[i].Type {
		case raftpb.EntryConfChange:
			var cc raftpb.ConfChange
			if err := cc.Unmarshal(ents[i].Data); err != nil {
				return fmt.Errorf("conf change at %d: %w", ents[i].Index, err)
			}
			cs = n.rn.ApplyConfChange(cc)
			ccs = append(ccs, appliedConfChange{cc, ents[i].Index})
		case raftpb.EntryConfChangeV2:
			var cc raftpb.ConfChangeV2
			if err := cc.Unmarshal(ents[i].Data); err != nil {
				return fmt.Errorf("conf change at %d: %w", ents[i].Index, err)
			}
			cs = n.rn.ApplyConfChange(cc)
		}
	}
	results, err := n.sm.Apply(ents, cs)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	n.mu.Lock()
	for i := range ents {
		if ents[i].Type != raftpb.EntryNormal || len(ents[i].Data) == 0 {
			continue
		}
		id, t, ok := entry.Header(ents[i].Data)
		if !ok {
			continue
		}
		n.clock.observe(t)
		index := ents[i].Index
		entry.Answers(id, results[i], func(id uint64, r *statev1.Result) { n.answer(id, r, index) })
	}
	n.mu.Unlock()
	for _, c := range ccs {
		n.appliedMembership(c)
	}
	if len(ccs) > 0 {
		n.kickVersionCheck() // a new member may support less, or a removed one held the version back
	}
	n.notifyApplied()
	return nil
}

// answer hands res to the proposer waiting for request id (n.mu held).
func (n *Node) answer(id uint64, res *statev1.Result, index uint64) {
	if id == 0 {
		return
	}
	if ch, ok := n.waiters[id]; ok {
		select {
		case ch <- outcome{res: res, index: index}:
		default:
		}
		delete(n.waiters, id)
	}
}

func (n *Node) notifyApplied() {
	n.mu.Lock()
	close(n.appliedc)
	n.appliedc = make(chan struct{})
	n.mu.Unlock()
}

func (n *Node) maybeCompact() {
	applied := n.sm.AppliedIndex()
	if applied < n.compactedAt+n.cfg.SnapshotEntries || applied <= n.cfg.KeepEntries {
		return
	}
	to := applied - n.cfg.KeepEntries
	if first, err := n.store.FirstIndex(); err != nil || to < first {
		return
	}
	if err := n.store.Compact(to); err != nil {
		n.logger.Warn("log compaction failed", "to", to, "err", err)
		return
	}
	n.compactedAt = applied
	n.logger.Debug("compacted log", "to", to, "applied", applied)
}

func (n *Node) observeLeader(lead uint64) {
	if old := n.lead.Swap(lead); old == lead {
		return
	}
	if lead != 0 {
		n.leaderChanges.Add(1)
	}
	n.clock.setLeading(lead == n.cfg.ID)
	if lead == n.cfg.ID {
		n.kickVersionCheck()
	}
	n.logger.Info("leader changed", "leader", fmt.Sprintf("%x", lead), "term", n.rn.Status().Term)
	n.mu.Lock()
	close(n.leaderChanged)
	n.leaderChanged = make(chan struct{})
	n.mu.Unlock()
}

// Status is a snapshot of the node's view of the cluster.
type Status struct {
	ID      uint64
	Leader  uint64
	Term    uint64
	Commit  uint64
	Applied uint64
	// SnapshotsApplied counts snapshots received from a leader since start,
	// one being installed included: once Applied reaches a snapshot's
	// index, it is counted.
	SnapshotsApplied uint64
	// Healthy is false after a storage failure stopped the node.
	Healthy bool
	// InstallingSnapshot is true while a snapshot from the leader is
	// received or installed: the node's state is about to be replaced.
	InstallingSnapshot bool
	// ClusterVersion is the cluster version as this node applied it (1
	// until the first rise; see clusterversion.go); MaxClusterVersion the
	// highest this node supports.
	ClusterVersion, MaxClusterVersion uint32
}

// Status returns the node's current view.
func (n *Node) Status() Status {
	st := n.rn.Status()
	return Status{
		ID:      n.cfg.ID,
		Leader:  st.Lead,
		Term:    st.Term,
		Commit:  st.Commit,
		Applied: n.sm.AppliedIndex(),

		SnapshotsApplied: n.snapshots.Load(),
		Healthy:          n.failed.Load() == nil,

		InstallingSnapshot: n.installing.Load() > 0,

		ClusterVersion:    n.ClusterVersion(),
		MaxClusterVersion: n.cfg.MaxClusterVersion,
	}
}

// Leader returns the current leader's id, 0 when unknown.
func (n *Node) Leader() uint64 { return n.lead.Load() }

// LogNow estimates the current log time (Unix nanoseconds): on the leader,
// what it would stamp now; elsewhere, the last applied log time plus the
// time since it was applied.
func (n *Node) LogNow() int64 { return n.clock.now() }

// IsLeader reports whether this node currently leads.
func (n *Node) IsLeader() bool { return n.lead.Load() == n.cfg.ID }

// ID returns this node's Raft id.
func (n *Node) ID() uint64 { return n.cfg.ID }

// waitApplied blocks until the applied index reaches index.
func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	for {
		n.mu.Lock()
		ch := n.appliedc
		n.mu.Unlock()
		if n.sm.AppliedIndex() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ErrTimeout
		case <-n.stopc:
			return n.stoppedErr()
		}
	}
}

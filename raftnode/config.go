package raftnode

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"time"

	"github.com/keystore-dev/keystore/entry"
)

// Config configures a Node. Zero values take the defaults in withDefaults.
type Config struct {
	// ID is this node's Raft id; see IDFromName.
	ID uint64
	// Peers maps the Raft id of every member, this node included, to its
	// peer address (host:port).
	Peers map[uint64]string
	// Names optionally names the members of Peers, for the bootstrap's
	// conf changes (the state machine keeps them with the addresses).
	Names map[uint64]string
	// Resolve, when set, chooses the address to dial member id (named
	// name) at, given the one the log has for it (addr, "" if it has none
	// yet); "" keeps the address the transport has. The server answers
	// from its routes (a proxy or NAT in between: the fault tests route
	// every link through a proxy of its own this way) and from gossip (a
	// member that restarted on a new address). Called from the node's
	// goroutines; RefreshPeers asks again for every member.
	Resolve func(id uint64, name, addr string) string
	// Join: this node joins an existing cluster (it was added as a
	// learner). With an empty log it waits for the leader to send it the
	// log instead of bootstrapping a new cluster from Peers.
	Join bool
	// ClusterID names the cluster (see ClusterIDFor). Peer messages carry
	// it, and a node refuses those of another cluster, so that a node
	// pointed at the wrong addresses cannot join or disrupt a stranger.
	ClusterID uint64

	// TickInterval is the Raft tick (default 100ms).
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks (default 10).
	ElectionTicks int
	// HeartbeatTicks is the heartbeat interval in ticks (default 1).
	HeartbeatTicks int

	// SnapshotEntries is how many entries are applied between log
	// compactions (default 10,000).
	SnapshotEntries uint64
	// KeepEntries is how many applied entries compaction keeps so a
	// briefly lagging follower catches up from the log, not a snapshot
	// (default 5,000).
	KeepEntries uint64

	// IdleTickInterval is how often an otherwise idle leader appends a tick
	// entry so log time, and with it expiry, keeps moving (default 1s;
	// negative disables).
	IdleTickInterval time.Duration

	// VersionCheckInterval is how often the leader asks every member which
	// cluster versions it supports, to raise the cluster version once all
	// support a higher one (default 3s; also after each membership change
	// and on becoming leader; negative disables). See clusterversion.go.
	VersionCheckInterval time.Duration
	// MaxClusterVersion is the highest cluster version this node tells
	// the leader it supports (default, and at most, entry.ClusterVersion).
	// Tests lower it to stand in for an older binary.
	MaxClusterVersion uint32

	// MaxSizePerMsg caps the entries in one append message (default 1 MiB).
	MaxSizePerMsg uint64
	// MaxInflightMsgs caps unacknowledged append messages per follower
	// (default 256).
	MaxInflightMsgs int
	// MaxUncommittedBytes bounds the commands a leader holds in entries
	// no quorum has acknowledged yet (default 64 MiB): they stay in memory
	// until committed. Beyond it proposals fail at once with ErrOverloaded
	// instead of piling up while the quorum is stalled or slow. (An entry
	// is always accepted when nothing is uncommitted, whatever its size.)
	MaxUncommittedBytes uint64

	// PeerTLS, when set, makes every peer connection mutual TLS, with each
	// peer's certificate checked against the member it says it is (see
	// PeerTLS). The peer gRPC server then needs PeerServerCredentials.
	PeerTLS *PeerTLS

	// CheckForwarded, when set, validates a command another node forwarded
	// before this leader proposes it; an error refuses it (ErrRefused on
	// the forwarding node). The node that forwards validated its client's
	// request; this keeps a forged Forward on the peer port from storing
	// what no client request could.
	CheckForwarded func(command []byte) error

	// NoAutoPromote turns off the leader's promotion of learners that
	// caught up (Promote must then be called).
	NoAutoPromote bool

	// Transport carries the node's traffic to its peers; nil: the TCP
	// transport, over the addresses in Peers (served by SplitPeerListener
	// and PeerServer).
	Transport Transport

	// Tuning. The defaults were tuned for three nodes sharing two cores
	// (docs/performance-notes.md); each can be turned off, and the fault
	// suite passes with each off.

	// CommitHold is how long an append that carries no entries (only a
	// commit index) waits for the next append to the same peer to carry
	// it instead (default 2ms; negative: never held).
	CommitHold time.Duration
	// NoSenderYield turns off the yield after a Ready's messages are
	// queued, which lets the peer senders run before the handler's fsync.
	NoSenderYield bool
	// CallerReadies bounds the Readies a proposer or reader handles on its
	// own goroutine before it leaves the rest to the run loop (default 2;
	// negative: no bound).
	CallerReadies int
	// PackRounds bounds the packer rounds a proposer drains on its own
	// goroutine before one of the node's takes over (default 2; negative:
	// no bound).
	PackRounds int
	// MaxPackProposals and MaxPackBytes bound one packed entry (defaults
	// 1024 proposals and 256 KiB of commands; a larger command travels
	// alone). MaxPackProposals 1 turns packing off.
	MaxPackProposals int
	MaxPackBytes     int

	// Now is the wall clock (default time.Now). It seeds log time when a
	// new cluster starts; after that log time advances by monotonic time
	// only (see logClock). Apply never reads any clock.
	Now func() time.Time

	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports a configuration error.
func (c Config) Validate() error {
	if c.ID == 0 {
		return errors.New("raftnode: ID must be non-zero")
	}
	if _, ok := c.Peers[c.ID]; !ok {
		return fmt.Errorf("raftnode: Peers has no address for this node (id %x)", c.ID)
	}
	for id, addr := range c.Peers {
		if id == 0 || addr == "" {
			return fmt.Errorf("raftnode: bad peer %x=%q", id, addr)
		}
	}
	if c.MaxClusterVersion > entry.ClusterVersion {
		return fmt.Errorf("raftnode: MaxClusterVersion %d is above what this binary applies (%d)", c.MaxClusterVersion, entry.ClusterVersion)
	}
	if d := c.withDefaults(); d.ElectionTicks <= d.HeartbeatTicks {
		return errors.New("raftnode: ElectionTicks must exceed HeartbeatTicks")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.TickInterval <= 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.ElectionTicks <= 0 {
		c.ElectionTicks = 10
	}
	if c.HeartbeatTicks <= 0 {
		c.HeartbeatTicks = 1
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = 10_000
	}
	if c.KeepEntries == 0 {
		c.KeepEntries = 5_000
	}
	if c.IdleTickInterval == 0 {
		c.IdleTickInterval = time.Second
	}
	if c.VersionCheckInterval == 0 {
		c.VersionCheckInterval = 3 * time.Second
	}
	if c.MaxClusterVersion == 0 {
		c.MaxClusterVersion = entry.ClusterVersion
	}
	if c.MaxSizePerMsg == 0 {
		c.MaxSizePerMsg = 1 << 20
	}
	if c.MaxInflightMsgs == 0 {
		c.MaxInflightMsgs = 256
	}
	if c.MaxUncommittedBytes == 0 {
		c.MaxUncommittedBytes = 64 << 20
	}
	if c.CommitHold == 0 {
		c.CommitHold = 2 * time.Millisecond
	}
	if c.CallerReadies == 0 {
		c.CallerReadies = 2
	}
	if c.PackRounds == 0 {
		c.PackRounds = 2
	}
	if c.MaxPackProposals <= 0 {
		c.MaxPackProposals = 1024
	}
	if c.MaxPackBytes <= 0 {
		c.MaxPackBytes = 256 << 10
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// IDFromName derives a stable, non-zero Raft id from a member name, so every
// node computes the same ids from the same --initial-cluster.
func IDFromName(name string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	if id := h.Sum64(); id != 0 {
		return id
	}
	return 1
}

// ClusterIDFor derives a cluster id from the cluster's token and its
// members' names (not their addresses, which may change): every member
// computes the same id, and two clusters differ if their tokens or member
// names do.
func ClusterIDFor(token string, names []string) uint64 {
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	h := fnv.New64a()
	_, _ = h.Write([]byte(token))
	for _, n := range sorted {
		_, _ = h.Write([]byte{0})
		_, _ = h.Write([]byte(n))
	}
	if id := h.Sum64(); id != 0 {
		return id
	}
	return 1
}

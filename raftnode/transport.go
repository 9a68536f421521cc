package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Transport carries one node's traffic to its peers: raft messages,
// snapshots (streamed beside the messages, see snapshot.go) and proposals
// forwarded to the leader. The node hands it what raft wants sent and
// never waits on the network; the transport delivers what arrives to the
// node's Local side.
//
// The node uses the TCP transport (tcp.go) unless Config.Transport names
// another; InmemNetwork's transports are its twin for tests, with
// partitions, delays and drops.
type Transport interface {
	// Start begins carrying traffic for local, this node. Called once,
	// before any other method.
	Start(local Local) error
	// Send queues msgs for their peers without blocking. Messages may be
	// delayed, merged or lost, as raft allows; a message that cannot go
	// out is reported to Local.ReportUnreachable, a MsgSnap's outcome to
	// Local.ReportSnapshot.
	Send(msgs []raftpb.Message)
	// Forward proposes command on node to (the leader) and returns its
	// apply result and the index of the entry that carried it. It returns
	// ErrTimeout when ctx ends and ErrOverloaded when the leader refused
	// for overload; any other error means the proposal may or may not have
	// been applied, and may be retried under the same request id.
	Forward(ctx context.Context, to, requestID uint64, command []byte) (*statev1.Result, uint64, error)
	// ForwardConfChange proposes a conf change (raftpb.ConfChange,
	// encoded) on node to (the leader) and returns the index of its entry
	// once applied there. Errors as Forward's.
	ForwardConfChange(ctx context.Context, to uint64, cc []byte) (uint64, error)
	// Hello asks node to about itself and its cluster (see HelloInfo):
	// whether this node is a member in its configuration, how far it has
	// applied, and the cluster versions it supports and applied.
	Hello(ctx context.Context, to uint64) (HelloInfo, error)
	// AddPeer makes id a peer at addr (a new address replaces the old);
	// RemovePeer forgets id, whose traffic is refused from then on. The
	// node calls them as it applies conf changes, and at start for the
	// members it knows.
	AddPeer(id uint64, addr string)
	RemovePeer(id uint64)
	// Stop ends all traffic and waits for the transport's goroutines;
	// nothing is delivered to Local after it returns.
	Stop()
}

// Local is the node as its transport sees it: where inbound traffic goes.
// Its methods may be called from any goroutine.
type Local interface {
	// Step steps the messages of one frame from a peer into raft, all
	// addressed to this node by one sender.
	Step(msgs []raftpb.Message) error
	// ReportUnreachable tells raft that a message to id was lost.
	ReportUnreachable(id uint64)
	// ReportSnapshot tells raft how a snapshot sent to id ended.
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
	// ProposeForwarded proposes a command a follower forwarded, if this
	// node leads; errNotLeader otherwise.
	ProposeForwarded(ctx context.Context, requestID uint64, command []byte) (*statev1.Result, uint64, error)
	// ProposeConfChangeForwarded proposes a conf change a follower
	// forwarded (raftpb.ConfChange, encoded), if this node leads
	// (errNotLeader otherwise), and returns its index once applied.
	ProposeConfChangeForwarded(ctx context.Context, cc []byte) (uint64, error)
	// Hello reports what this node has applied, how many members it
	// knows, whether from is one of them, and whether from has started
	// as one before (see Hello in the peer protocol).
	Hello(from uint64) HelloInfo
	// OpenSnapshot opens the state to send as a snapshot (see
	// SnapshotStore.OpenSnapshot).
	OpenSnapshot() (raftpb.SnapshotMetadata, io.ReadCloser, error)
	// ReceiveSnapshot stages the data of the snapshot m carries, read from
	// r to its end, and then steps m into raft. One at a time: a second
	// concurrent call fails with errSnapshotBusy.
	ReceiveSnapshot(m raftpb.Message, r io.Reader) error
}

// Errors a transport hands back from Local.
var (
	errNotLeader    = errors.New("raftnode: not leader")
	errSnapshotBusy = errors.New("raftnode: receiving another snapshot")
)

// nodeLocal is Node's Local side (kept off Node's exported methods).
type nodeLocal struct{ n *Node }

func (l nodeLocal) Step(msgs []raftpb.Message) error {
	if len(msgs) > 0 {
		l.n.heardFrom(msgs[0].From)
	}
	return l.n.rn.StepFrame(msgs)
}

func (l nodeLocal) ReportUnreachable(id uint64) { l.n.rn.ReportUnreachable(id) }

func (l nodeLocal) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	l.n.rn.ReportSnapshot(id, status)
}

func (l nodeLocal) ProposeForwarded(ctx context.Context, requestID uint64, command []byte) (*statev1.Result, uint64, error) {
	if l.n.lead.Load() != l.n.cfg.ID {
		return nil, 0, errNotLeader
	}
	if check := l.n.cfg.CheckForwarded; check != nil {
		if err := check(command); err != nil {
			l.n.logger.Warn("refused a forwarded command", "err", err)
			return nil, 0, fmt.Errorf("%w: %v", ErrRefused, err)
		}
	}
	return l.n.proposeLocal(ctx, requestID, command)
}

func (l nodeLocal) ProposeConfChangeForwarded(ctx context.Context, b []byte) (uint64, error) {
	var cc raftpb.ConfChange
	if err := cc.Unmarshal(b); err != nil {
		return 0, fmt.Errorf("%w: undecodable conf change", ErrMembership)
	}
	if l.n.lead.Load() != l.n.cfg.ID {
		return 0, errNotLeader
	}
	return l.n.proposeConfChangeLocal(ctx, cc)
}

// HelloInfo is what a node tells another about itself and its cluster.
type HelloInfo struct {
	Applied uint64 // the index it applied
	Members int    // how many members its configuration names
	Member  bool   // whether the asker is one of them
	Started bool   // whether the asker published itself as a started member before
	// MaxClusterVersion is the highest cluster version its binary
	// applies (1 for a binary from before cluster versions);
	// ClusterVersion the one it applied.
	MaxClusterVersion, ClusterVersion uint32
}

func (l nodeLocal) Hello(from uint64) HelloInfo {
	st := l.n.rn.Status()
	voters := st.Config.Voters.IDs()
	_, voter := voters[from]
	_, learner := st.Config.Learners[from]
	h := HelloInfo{Applied: l.n.sm.AppliedIndex(), Members: len(voters) + len(st.Config.Learners), Member: voter || learner,
		MaxClusterVersion: l.n.cfg.MaxClusterVersion, ClusterVersion: l.n.ClusterVersion()}
	if ml, ok := l.n.sm.(memberLister); ok {
		for _, m := range ml.Members() {
			if m.GetId() == from && m.GetStarted() {
				h.Started = true
			}
		}
	}
	return h
}

func (l nodeLocal) OpenSnapshot() (raftpb.SnapshotMetadata, io.ReadCloser, error) {
	return l.n.store.OpenSnapshot()
}

func (l nodeLocal) ReceiveSnapshot(m raftpb.Message, r io.Reader) error {
	n := l.n
	if !n.receiving.TryLock() {
		return errSnapshotBusy
	}
	defer n.receiving.Unlock()
	n.installing.Add(1)
	defer n.installing.Add(-1)
	if err := n.store.ReceiveSnapshot(m.Snapshot.Metadata, r); err != nil {
		return err
	}
	// The stream must end where the store stopped reading.
	var b [1]byte
	if k, err := r.Read(b[:]); k > 0 {
		return errors.New("data after the end of the snapshot")
	} else if err != io.EOF {
		return err
	}
	return n.rn.StepFrame([]raftpb.Message{m})
}

package raftnode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/entry"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// memLog is a LogStore over raft.MemoryStorage, for tests of a whole Node
// without a disk. Append fails with failErr once it is set, and takes
// appendDelay (a stand-in for the fsync).
type memLog struct {
	*raft.MemoryStorage
	sm *memSM // a snapshot's data is its log time (8 bytes LE)

	mu          sync.Mutex
	failErr     error
	appendDelay time.Duration
}

func newMemLog(sm *memSM) *memLog { return &memLog{MemoryStorage: raft.NewMemoryStorage(), sm: sm} }

func (l *memLog) fail(err error) {
	l.mu.Lock()
	l.failErr = err
	l.mu.Unlock()
}

func (l *memLog) Append(hs raftpb.HardState, ents []raftpb.Entry, _ bool) error {
	l.mu.Lock()
	err, delay := l.failErr, l.appendDelay
	l.mu.Unlock()
	if err != nil {
		return err
	}
	time.Sleep(delay)
	if !raft.IsEmptyHardState(hs) {
		if err := l.SetHardState(hs); err != nil {
			return err
		}
	}
	return l.MemoryStorage.Append(ents)
}

func (l *memLog) ApplySnapshot(snap raftpb.Snapshot) error {
	if err := l.MemoryStorage.ApplySnapshot(snap); err != nil {
		return err
	}
	var t int64
	if len(snap.Data) == 8 {
		t = int64(binary.LittleEndian.Uint64(snap.Data))
	}
	l.sm.restore(snap.Metadata.Index, t)
	return nil
}

func (l *memLog) Compact(index uint64) error { return l.MemoryStorage.Compact(index) }

// OpenSnapshot and ReceiveSnapshot: these tests install snapshots by
// stepping them, never over the wire.
func (l *memLog) OpenSnapshot() (raftpb.SnapshotMetadata, io.ReadCloser, error) {
	return raftpb.SnapshotMetadata{}, nil, raft.ErrSnapshotTemporarilyUnavailable
}

func (l *memLog) ReceiveSnapshot(raftpb.SnapshotMetadata, io.Reader) error {
	return errors.New("memLog does not receive snapshots")
}

// memSM is a StateMachine that answers every proposal with an empty result
// carrying its request id.
type memSM struct {
	mu             sync.Mutex
	applied        uint64
	logTime        int64
	clusterVersion uint32 // raised by SetClusterVersion entries, as storage does
}

// ClusterVersion implements clusterVersioner.
func (m *memSM) ClusterVersion() uint32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return entry.EffectiveVersion(m.clusterVersion)
}

func (m *memSM) Apply(ents []raftpb.Entry, _ *raftpb.ConfState) ([]*statev1.Result, error) {
	res := make([]*statev1.Result, len(ents))
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, e := range ents {
		m.applied = e.Index
		if e.Type != raftpb.EntryNormal || len(e.Data) == 0 {
			continue
		}
		env := &statev1.Entry{}
		if err := proto.Unmarshal(e.Data, env); err != nil {
			continue
		}
		if err := entry.CheckSupported(fmt.Sprintf("entry %d", e.Index), entry.Needs(env)); err != nil {
			return nil, err
		}
		m.logTime = max(m.logTime, env.GetTime())
		if v := env.GetSetClusterVersion(); v > 0 {
			m.clusterVersion = max(m.clusterVersion, v)
			continue
		}
		if len(env.GetProposals()) == 0 {
			res[i] = &statev1.Result{RequestId: env.GetRequestId(), LogTime: m.logTime}
			continue
		}
		packed := make([]*statev1.Result, len(env.GetProposals()))
		for j, p := range env.GetProposals() {
			packed[j] = &statev1.Result{RequestId: p.GetRequestId(), LogTime: m.logTime}
		}
		res[i] = &statev1.Result{Packed: packed, LogTime: m.logTime}
	}
	return res, nil
}

func (m *memSM) restore(index uint64, logTime int64) {
	m.mu.Lock()
	m.applied, m.logTime = index, logTime
	m.mu.Unlock()
}

func (m *memSM) AppliedIndex() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applied
}

func (m *memSM) LogTime() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.logTime
}

// keyCmd is a command on record ns/key, which the packer may pack with
// commands on other records (any other bytes travel alone).
func keyCmd(key string) []byte {
	b, err := proto.Marshal(&statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "ns", Key: key, Token: 1}}})
	if err != nil {
		panic(err)
	}
	return b
}

// memPeers is a cluster of n members (ids 1..n) whose peers other than the
// node under test are never reachable.
func memPeers(n int) map[uint64]string {
	peers := make(map[uint64]string, n)
	for id := 1; id <= n; id++ {
		peers[uint64(id)] = "127.0.0.1:1" // refused
	}
	return peers
}

// startMemNode starts a Node over a memLog and memSM; it stops when the
// test ends.
func startMemNode(t *testing.T, cfg Config, sm *memSM) (*Node, *memLog) {
	t.Helper()
	log := newMemLog(sm)
	n, err := New(cfg, log, sm)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	return n, log
}

// startLeader starts a one-member cluster and waits until it leads.
func startLeader(t *testing.T, sm *memSM) (*Node, *memLog) {
	t.Helper()
	n, log := startMemNode(t, Config{ID: 1, Peers: memPeers(1), TickInterval: 5 * time.Millisecond, IdleTickInterval: -1}, sm)
	waitFor(t, "leadership", n.IsLeader)
	return n, log
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

package raftnode

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// snapStore is a LogStore that only streams snapshots: it sends data as
// the state at md, and receives into got.
type snapStore struct {
	LogStore
	md   raftpb.SnapshotMetadata
	data []byte
	// failReceive fails that many receives first.
	failReceive atomic.Int32
	opened      atomic.Int32

	mu       sync.Mutex
	got      []byte
	gotMD    raftpb.SnapshotMetadata
	received int
}

func (s *snapStore) OpenSnapshot() (raftpb.SnapshotMetadata, io.ReadCloser, error) {
	s.opened.Add(1)
	return s.md, io.NopCloser(bytes.NewReader(s.data)), nil
}

func (s *snapStore) ReceiveSnapshot(md raftpb.SnapshotMetadata, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.failReceive.Add(-1) >= 0 {
		return errors.New("injected")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got, s.gotMD = b, md
	s.received++
	return nil
}

func (r *recordingCore) snapshotReports() []raft.SnapshotStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]raft.SnapshotStatus(nil), r.snapReports...)
}

func waitReports(t *testing.T, rc *recordingCore, n int, within time.Duration) []raft.SnapshotStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if got := rc.snapshotReports(); len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("raft heard %d snapshot reports; want %d", len(rc.snapshotReports()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// snapPair is pairOverTCP with snapshot stores on both ends; the sender
// streams data as the state at index 7.
func snapPair(t *testing.T, data []byte) (a *Node, arc *recordingCore, as *snapStore, b *Node, brc *recordingCore, bs *snapStore) {
	t.Helper()
	a, arc, b, brc, _ = pairOverTCP(t)
	as = &snapStore{md: raftpb.SnapshotMetadata{Index: 7, Term: 2, ConfState: raftpb.ConfState{Voters: []uint64{1, 2}}}, data: data}
	bs = &snapStore{}
	a.store, b.store = as, bs
	return a, arc, as, b, brc, bs
}

// TestSnapshotStreamsBesideRaft: a MsgSnap handed to the transport is
// streamed on a connection of its own, in chunks (here several MiB), with
// the metadata of the state actually sent (newer than raft's); the
// receiver has it whole before raft sees the message, and raft on the
// sender hears SnapshotFinish.
func TestSnapshotStreamsBesideRaft(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), (3<<20+12345)/16)
	a, arc, _, _, brc, bs := snapPair(t, data)
	a.tcp.Send([]raftpb.Message{{Type: raftpb.MsgSnap, From: 1, To: 2, Term: 2,
		Snapshot: &raftpb.Snapshot{Data: []byte("KSS2"), Metadata: raftpb.SnapshotMetadata{Index: 5, Term: 2}}}})
	if got := waitReports(t, arc, 1, 10*time.Second); got[0] != raft.SnapshotFinish {
		t.Fatalf("raft heard %v; want SnapshotFinish", got)
	}
	msgs := waitMessages(t, brc, 1)
	m := msgs[0]
	if m.Type != raftpb.MsgSnap || m.Snapshot == nil || m.Snapshot.Metadata.Index != 7 || m.Snapshot.Metadata.Term != 2 {
		t.Fatalf("receiver's raft got %v; want the MsgSnap at 7/2", m)
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if !bytes.Equal(bs.got, data) || bs.gotMD.Index != 7 {
		t.Fatalf("receiver staged %d bytes at %d; want the %d sent at 7", len(bs.got), bs.gotMD.Index, len(data))
	}
	if a.installing.Load() != 0 {
		t.Errorf("installing = %d after the transfer; want 0", a.installing.Load())
	}
}

// TestSnapshotFailureBacksOff: a receiver that refuses a snapshot leaves
// raft's MsgSnap unstepped there, and the sender reports SnapshotFailure
// only after a backoff (raft sends that peer no other snapshot until it
// hears), then succeeds when raft asks again.
func TestSnapshotFailureBacksOff(t *testing.T) {
	a, arc, _, _, brc, bs := snapPair(t, []byte("state"))
	bs.failReceive.Store(1)
	msg := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: 2, Term: 2, Snapshot: &raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 5, Term: 2}}}
	start := time.Now()
	a.tcp.Send([]raftpb.Message{msg})
	// A second MsgSnap while the first transfer runs is not a second
	// transfer: the first one's report settles raft's view of the peer.
	a.tcp.Send([]raftpb.Message{msg})
	got := waitReports(t, arc, 1, 10*time.Second)
	if got[0] != raft.SnapshotFailure {
		t.Fatalf("raft heard %v; want SnapshotFailure", got)
	}
	if d := time.Since(start); d < snapBackoffMin {
		t.Errorf("failure reported after %v; want a backoff of at least %v", d, snapBackoffMin)
	}
	if n := len(brc.messages()); n != 0 {
		t.Errorf("receiver's raft got %d messages from a refused snapshot; want none", n)
	}
	a.tcp.Send([]raftpb.Message{msg})
	if got := waitReports(t, arc, 2, 10*time.Second); got[1] != raft.SnapshotFinish || len(got) != 2 {
		t.Fatalf("raft heard %v; want failure then finish (and no report for the duplicate)", got)
	}
	waitMessages(t, brc, 1)
}

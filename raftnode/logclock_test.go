package raftnode

import (
	"encoding/binary"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// fakeClocks is a wall clock and a monotonic clock the test moves apart.
type fakeClocks struct{ wall, mono time.Time }

func (f *fakeClocks) advance(d time.Duration) { f.wall, f.mono = f.wall.Add(d), f.mono.Add(d) }

func newFake() *fakeClocks {
	return &fakeClocks{wall: time.Unix(1_800_000_000, 0), mono: time.Unix(1000, 0)}
}

func (f *fakeClocks) clock(applied int64) *logClock {
	return newLogClock(func() time.Time { return f.wall }, func() time.Time { return f.mono }, applied)
}

func TestLogClockSeedsANewClusterFromTheWallClock(t *testing.T) {
	f := newFake()
	c := f.clock(0)
	c.setLeading(true)
	if got, want := c.stamp(), f.wall.UnixNano(); got != want {
		t.Fatalf("first stamp of a new cluster = %d; want the wall clock %d", got, want)
	}
}

func TestLogClockLeaderWithFastWallClockDoesNotRunAhead(t *testing.T) {
	f := newFake()
	c := f.clock(0)
	const t0 = int64(5_000_000_000_000)
	c.observe(t0) // applied an entry stamped t0 by the previous leader
	f.advance(300 * time.Millisecond)
	f.wall = f.wall.Add(10 * time.Minute) // this node's wall clock jumps ahead
	c.setLeading(true)
	f.advance(2 * time.Second)
	got := c.stamp()
	want := t0 + int64(2300*time.Millisecond)
	if got != want {
		t.Fatalf("stamp = t0+%s; want t0+%s (monotonic time only, not the skewed wall clock)",
			time.Duration(got-t0), time.Duration(want-t0))
	}
}

func TestLogClockNeverMovesBackwards(t *testing.T) {
	f := newFake()
	c := f.clock(0)
	const t0 = int64(5_000_000_000_000)
	c.setLeading(true)
	c.observe(t0)
	// A later applied entry (from a previous term) carries a time past this
	// leader's anchor: stamps do not fall below it.
	c.observe(t0 + int64(time.Hour))
	if got := c.stamp(); got < t0+int64(time.Hour) {
		t.Fatalf("stamp %d below the applied log time %d", got, t0+int64(time.Hour))
	}
	prev := c.stamp()
	for i := 0; i < 10; i++ {
		f.advance(time.Millisecond)
		f.wall = f.wall.Add(-time.Hour) // the wall clock runs backwards
		if got := c.stamp(); got < prev {
			t.Fatalf("stamp went backwards: %d after %d", got, prev)
		}
		prev = c.stamp()
	}
}

func TestLogClockDowntimeDoesNotCount(t *testing.T) {
	f := newFake()
	const t0 = int64(5_000_000_000_000)
	// The whole cluster was down for a day; the node restarts with t0 applied.
	f.advance(24 * time.Hour)
	c := f.clock(t0)
	c.setLeading(true)
	f.advance(time.Second)
	if got := c.stamp(); got != t0+int64(time.Second) {
		t.Fatalf("stamp after restart = t0+%s; want t0+1s", time.Duration(got-t0))
	}
}

func TestLogClockFollowerEstimate(t *testing.T) {
	f := newFake()
	c := f.clock(0)
	const t0 = int64(5_000_000_000_000)
	c.observe(t0)
	f.advance(750 * time.Millisecond)
	if got := c.now(); got != t0+int64(750*time.Millisecond) {
		t.Fatalf("follower estimate = t0+%s; want t0+750ms", time.Duration(got-t0))
	}
}

// TestLogClockLeaderLearnsALaterLogTime: a leader that applies a log time
// beyond its own stamps (a snapshot installed while it leads, or an entry
// of an earlier term) stamps on from there, by monotonic time: log time
// does not freeze at that maximum until its anchor catches up.
func TestLogClockLeaderLearnsALaterLogTime(t *testing.T) {
	f := newFake()
	const t0 = int64(1_000 * time.Second)
	c := f.clock(t0)
	c.setLeading(true)
	f.advance(time.Second)
	c.observe(10_000 * int64(time.Second))
	for i := 1; i <= 3; i++ {
		f.advance(time.Second)
		if got, want := c.stamp(), int64(10_000+i)*int64(time.Second); got != want {
			t.Fatalf("stamp %ds after learning log time 10000s = %s; want %s", i, time.Duration(got), time.Duration(want))
		}
	}
}

// snapshotReady is a Ready installing a snapshot at index whose state has
// log time at.
func snapshotReady(index uint64, at int64) raft.Ready {
	data := binary.LittleEndian.AppendUint64(nil, uint64(at))
	return raft.Ready{Snapshot: raftpb.Snapshot{Data: data, Metadata: raftpb.SnapshotMetadata{
		Index: index, Term: 2, ConfState: raftpb.ConfState{Voters: []uint64{1}}}}}
}

// TestNodeLearnsLogTimeOfInstalledSnapshot: a node that applied log time
// 1,000s and installs a snapshot at 10,000s takes log time on from 10,000s
// (its estimate, and its stamps once it leads), not from 1,000s (which the
// state machine, keeping the maximum, would ignore for hours).
func TestNodeLearnsLogTimeOfInstalledSnapshot(t *testing.T) {
	sm := &memSM{}
	sm.restore(50, 1_000*int64(time.Second))
	n, err := New(Config{ID: 1, Peers: memPeers(1)}, newMemLog(sm), sm)
	if err != nil {
		t.Fatal(err)
	}
	const snapTime = 10_000 * int64(time.Second)
	if err := n.handleReady(snapshotReady(100, snapTime)); err != nil {
		t.Fatal(err)
	}
	if got := n.LogNow(); got < snapTime {
		t.Errorf("LogNow after the snapshot = %s; want at least %s", time.Duration(got), time.Duration(snapTime))
	}
	n.clock.setLeading(true)
	first := n.clock.stamp()
	time.Sleep(5 * time.Millisecond)
	if second := n.clock.stamp(); first < snapTime || second <= first {
		t.Errorf("stamps after the snapshot %s, then %s; want from %s on, moving", time.Duration(first), time.Duration(second), time.Duration(snapTime))
	}
}

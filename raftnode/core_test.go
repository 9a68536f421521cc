package raftnode

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// TestCorePumpHandlesReadiesOneAtATime: many goroutines propose and pump
// at once; every Ready is handled by one goroutine at a time, and every
// proposal is committed (no step is left without its Ready).
func TestCorePumpHandlesReadiesOneAtATime(t *testing.T) {
	ms := raft.NewMemoryStorage()
	rn, err := raft.NewRawNode(&raft.Config{ID: 1, ElectionTick: 10, HeartbeatTick: 1, Storage: ms,
		MaxSizePerMsg: 1 << 20, MaxInflightMsgs: 256, Logger: raftLogger{slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := rn.Bootstrap([]raft.Peer{{ID: 1}}); err != nil {
		t.Fatal(err)
	}
	var (
		inside, maxInside atomic.Int32
		committed         atomic.Int64
		c                 *core
	)
	handle := func(rd raft.Ready) error {
		n := inside.Add(1)
		defer inside.Add(-1)
		for {
			m := maxInside.Load()
			if n <= m || maxInside.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(50 * time.Microsecond) // widen the window for overlap
		if !raft.IsEmptyHardState(rd.HardState) {
			_ = ms.SetHardState(rd.HardState)
		}
		if err := ms.Append(rd.Entries); err != nil {
			return err
		}
		for _, e := range rd.CommittedEntries {
			switch {
			case e.Type == raftpb.EntryConfChange:
				var cc raftpb.ConfChange
				_ = cc.Unmarshal(e.Data)
				c.ApplyConfChange(cc)
			case len(e.Data) > 0:
				committed.Add(1)
			}
		}
		return nil
	}
	c = newCore(rn, 2, handle, func(err error) { t.Errorf("handle failed: %v", err) })
	c.Pump() // the bootstrap conf change
	c.mu.Lock()
	_ = c.rn.Campaign()
	c.mu.Unlock()
	c.Pump()
	if st := c.Status(); st.RaftState != raft.StateLeader {
		t.Fatalf("single voter is %v after campaigning; want leader", st.RaftState)
	}

	const workers, each = 8, 100
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if err := c.Propose([]byte("x")); err != nil {
					t.Errorf("Propose: %v", err)
					return
				}
				c.Pump()
			}
		}()
	}
	wg.Wait()
	c.Pump() // a late step whose pump found the handler busy was picked up by it
	if got := committed.Load(); got != workers*each {
		t.Errorf("%d proposals committed; want %d", got, workers*each)
	}
	if m := maxInside.Load(); m != 1 {
		t.Errorf("up to %d goroutines handled a Ready at once; want 1", m)
	}

	// Several entries in one call all commit; none is a no-op (raft itself
	// panics on a proposal without entries).
	before := committed.Load()
	if err := c.Propose([]byte("a"), []byte("b"), []byte("c")); err != nil {
		t.Fatalf("Propose of three entries: %v", err)
	}
	if err := c.Propose(); err != nil {
		t.Fatalf("Propose of nothing: %v", err)
	}
	c.Pump()
	if got := committed.Load() - before; got != 3 {
		t.Errorf("%d of 3 entries proposed together committed", got)
	}
	c.stop()
	if err := c.Propose([]byte("x")); err != raft.ErrStopped {
		t.Errorf("Propose after stop: %v; want raft.ErrStopped", err)
	}
}

// leaderCore returns a core over a one-voter RawNode that leads. Its
// handler persists to a MemoryStorage, applies conf changes, counts the
// committed entries with data, then calls during (if set).
func leaderCore(t *testing.T) (c *core, committed *atomic.Int64, during *func()) {
	t.Helper()
	ms := raft.NewMemoryStorage()
	rn, err := raft.NewRawNode(&raft.Config{ID: 1, ElectionTick: 10, HeartbeatTick: 1, Storage: ms,
		MaxSizePerMsg: 1 << 20, MaxInflightMsgs: 256, Logger: raftLogger{slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := rn.Bootstrap([]raft.Peer{{ID: 1}}); err != nil {
		t.Fatal(err)
	}
	committed = new(atomic.Int64)
	during = new(func())
	handle := func(rd raft.Ready) error {
		if !raft.IsEmptyHardState(rd.HardState) {
			_ = ms.SetHardState(rd.HardState)
		}
		if err := ms.Append(rd.Entries); err != nil {
			return err
		}
		for _, e := range rd.CommittedEntries {
			switch {
			case e.Type == raftpb.EntryConfChange:
				var cc raftpb.ConfChange
				_ = cc.Unmarshal(e.Data)
				c.ApplyConfChange(cc)
			case len(e.Data) > 0:
				committed.Add(1)
			}
		}
		if f := *during; f != nil {
			f()
		}
		return nil
	}
	c = newCore(rn, 2, handle, func(err error) { t.Errorf("handle failed: %v", err) })
	pumpAllForTest(c) // the bootstrap conf change
	c.mu.Lock()
	_ = c.rn.Campaign()
	c.mu.Unlock()
	pumpAllForTest(c)
	if st := c.Status(); st.RaftState != raft.StateLeader {
		t.Fatalf("single voter is %v after campaigning; want leader", st.RaftState)
	}
	return c, committed, during
}

// pumpAllForTest does what the run loop does when woken, until no one asks
// it to pump any more.
func pumpAllForTest(c *core) {
	for {
		c.pumpAll()
		select {
		case <-c.wake:
		default:
			return
		}
	}
}

// TestCorePumpBoundsReadiesPerCall: while raft keeps having a Ready (each
// handled Ready steps another proposal), one Pump call handles at most
// callerReadies of them, then wakes the run loop, which handles the rest:
// nothing stepped is left behind.
func TestCorePumpBoundsReadiesPerCall(t *testing.T) {
	c, committed, during := leaderCore(t)
	var handled, steps int
	*during = func() {
		handled++
		if steps < 100 {
			steps++
			if err := c.Propose([]byte("x")); err != nil {
				t.Errorf("Propose during a Ready: %v", err)
			}
		}
	}
	if err := c.Propose([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c.Pump()
	if handled == 0 || handled > c.callerReadies {
		t.Errorf("one Pump call handled %d Readies; want 1..%d", handled, c.callerReadies)
	}
	select {
	case <-c.wake:
	default:
		t.Fatal("Pump left Readies without waking the run loop")
	}
	pumpAllForTest(c)
	if got := committed.Load(); got != 101 {
		t.Errorf("%d proposals committed; want 101", got)
	}
}

// TestCorePumpDoesNotCaptureProposers: four proposers step and pump for a
// second while each Ready takes a while to persist; no proposer's Pump is
// kept handling everyone's Readies (it hands over to the run loop), and
// every proposal commits.
func TestCorePumpDoesNotCaptureProposers(t *testing.T) {
	c, committed, during := leaderCore(t)
	*during = func() { time.Sleep(200 * time.Microsecond) } // an fsync
	done := make(chan struct{})
	var loop sync.WaitGroup
	loop.Add(1)
	go func() { // the run loop
		defer loop.Done()
		for {
			select {
			case <-c.wake:
				c.pumpAll()
			case <-done:
				return
			}
		}
	}()
	const workers = 4
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		longest  time.Duration
		proposed atomic.Int64
	)
	end := time.Now().Add(time.Second)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				start := time.Now()
				if err := c.Propose([]byte("x")); err != nil {
					t.Errorf("Propose: %v", err)
					return
				}
				proposed.Add(1)
				c.Pump()
				took := time.Since(start)
				mu.Lock()
				longest = max(longest, took)
				mu.Unlock()
				time.Sleep(100 * time.Microsecond) // still a step per Ready handled
			}
		}()
	}
	wg.Wait()
	t.Logf("%d proposals; the longest Propose+Pump took %v", proposed.Load(), longest)
	if longest > 200*time.Millisecond {
		t.Errorf("the longest Propose+Pump took %v; want under 200ms (no proposer handles everyone's Readies)", longest)
	}
	deadline := time.Now().Add(5 * time.Second)
	for committed.Load() != proposed.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(done)
	loop.Wait()
	if got, want := committed.Load(), proposed.Load(); got != want {
		t.Errorf("%d of %d proposals committed", got, want)
	}
}

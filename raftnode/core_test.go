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
	c = newCore(rn, handle, func(err error) { t.Errorf("handle failed: %v", err) })
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

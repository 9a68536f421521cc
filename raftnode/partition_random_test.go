package raftnode

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestPartitionRandomFaults: rounds of random faults (a node isolated, a
// link cut one way, lossy and slow links), with proposals on every node
// throughout and log compaction on, then a heal: every node converges to
// the same applied index, no two lead in one term, and a proposal made
// after the heal applies everywhere.
func TestPartitionRandomFaults(t *testing.T) {
	const size = 5
	c := startInmemCluster(t, size, func(cfg *Config) { cfg.SnapshotEntries, cfg.KeepEntries = 16, 8 })
	c.waitLeader()
	// The schedule is fixed; the interleavings are not.
	rng := rand.New(rand.NewPCG(1, 1))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for _, id := range c.ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.propose(id, 50*time.Millisecond, fmt.Sprintf("%d-%d", id, i)); err == nil {
					mu.Lock()
					ok++
					mu.Unlock()
				}
			}
		}()
	}
	for range 8 {
		switch rng.IntN(4) {
		case 0:
			c.nw.Isolate(c.ids[rng.IntN(size)])
		case 1:
			a, b := c.ids[rng.IntN(size)], c.ids[rng.IntN(size)]
			c.nw.DisconnectOneWay(a, b)
		case 2:
			a, b := c.ids[rng.IntN(size)], c.ids[rng.IntN(size)]
			c.nw.SetDrop(a, b, 0.3)
			c.nw.SetDrop(b, a, 0.3)
		case 3:
			a, b := c.ids[rng.IntN(size)], c.ids[rng.IntN(size)]
			c.nw.SetDelay(a, b, time.Duration(rng.IntN(20))*time.Millisecond)
		}
		time.Sleep(time.Duration(50+rng.IntN(100)) * time.Millisecond)
		if rng.IntN(2) == 0 {
			c.nw.Heal()
		}
	}
	close(stop)
	wg.Wait()
	c.nw.Heal()
	for _, a := range c.ids {
		for _, b := range c.ids {
			c.nw.SetDrop(a, b, 0)
			c.nw.SetDelay(a, b, 0)
		}
	}
	lead, _ := c.waitLeader()
	c.mustPropose(lead, "after heal")
	applied := c.waitConverged(c.node(lead).Status().Applied, c.ids...)
	c.checkLogsMatch()
	var snaps uint64
	for _, id := range c.ids {
		snaps += c.node(id).Status().SnapshotsApplied
	}
	t.Logf("%d proposals applied, %d snapshots installed, converged at %d", ok, snaps, applied)
}

// checkLogsMatch checks that the nodes' logs hold the same entries where
// they overlap (raft's Log Matching); call it once the cluster is quiet.
func (c *inmemCluster) checkLogsMatch() {
	c.t.Helper()
	type entry struct {
		term uint64
		data []byte
		from uint64
	}
	seen := make(map[uint64]entry)
	for _, id := range c.ids {
		log := c.logs[id]
		first, _ := log.FirstIndex()
		last, _ := log.LastIndex()
		if last < first {
			continue
		}
		ents, err := log.Entries(first, last+1, math.MaxUint64)
		if err != nil {
			c.t.Errorf("node %d: entries %d..%d: %v", id, first, last, err)
			continue
		}
		for _, e := range ents {
			s, ok := seen[e.Index]
			if !ok {
				seen[e.Index] = entry{e.Term, e.Data, id}
				continue
			}
			if s.term != e.Term || !bytes.Equal(s.data, e.Data) {
				c.t.Errorf("entry %d: node %d has term %d, node %d term %d (or different data)", e.Index, s.from, s.term, id, e.Term)
			}
		}
	}
}

package raftnode

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/entry"
)

// clusterVersions returns each node's applied cluster version.
func (c *inmemCluster) clusterVersions() map[uint64]uint32 {
	out := make(map[uint64]uint32)
	for _, id := range c.ids {
		out[id] = c.node(id).Status().ClusterVersion
	}
	return out
}

// TestClusterVersionRollingUpgrade: three nodes that support only cluster
// version 1 (an older binary) are restarted one by one supporting 2, while
// a writer proposes; the cluster version stays 1 while any member supports
// only 1 (the leader asks every member, and one that says 1 holds it
// back), and rises to 2 on every node, through the log, soon after the
// last one; every write is acknowledged.
func TestClusterVersionRollingUpgrade(t *testing.T) {
	const check = 20 * time.Millisecond
	c := startInmemCluster(t, 3, func(cfg *Config) {
		cfg.MaxClusterVersion = 1
		cfg.VersionCheckInterval = check
	})
	c.waitLeader()
	stop, errs := make(chan struct{}), make(chan error, 1)
	go func() {
		defer close(errs)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// A node being restarted fails its proposals (ErrStopped):
			// none of those was acknowledged.
			if _, err := c.propose(c.ids[i%3], 5*time.Second, fmt.Sprint("w", i)); err != nil && !errors.Is(err, ErrStopped) {
				errs <- fmt.Errorf("write %d: %v", i, err)
				return
			}
		}
	}()
	for i, id := range c.ids {
		cfg := c.cfgs[id]
		cfg.MaxClusterVersion = 0 // this binary's
		c.cfgs[id] = cfg
		c.restart(id)
		c.waitLeader()
		if i == len(c.ids)-1 {
			break
		}
		time.Sleep(10 * check) // checks enough to raise it, were it allowed
		for id, v := range c.clusterVersions() {
			if v != 1 {
				t.Fatalf("after upgrading %d of 3 nodes: node %d is at cluster version %d; want 1", i+1, id, v)
			}
		}
	}
	waitFor(t, "cluster version 2 on every node", func() bool {
		for _, v := range c.clusterVersions() {
			if v != entry.ClusterVersion {
				return false
			}
		}
		return true
	})
	close(stop)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	c.waitConverged(0, c.ids...)
	for _, id := range c.ids {
		if st := c.node(id).Status(); st.MaxClusterVersion != entry.ClusterVersion || !st.Healthy {
			t.Fatalf("node %d: %+v", id, st)
		}
	}
}

// TestClusterVersionHeldBackByAnUnansweringMember: the leader raises the
// cluster version only when every member answered, since one it cannot
// reach may run an older binary.
func TestClusterVersionHeldBackByAnUnansweringMember(t *testing.T) {
	const check = 20 * time.Millisecond
	c := startInmemCluster(t, 3, func(cfg *Config) {
		cfg.MaxClusterVersion = 1
		cfg.VersionCheckInterval = check
	})
	lead, _ := c.waitLeader()
	for _, id := range c.ids {
		cfg := c.cfgs[id]
		cfg.MaxClusterVersion = 0
		c.cfgs[id] = cfg
	}
	// Every node now supports 2 but one is cut off: stopped, so it cannot
	// answer (a quorum still commits).
	var down uint64
	for _, id := range c.ids {
		if id != lead {
			down = id
			break
		}
	}
	c.node(down).Stop()
	for _, id := range c.ids {
		if id != down {
			c.restart(id)
		}
	}
	c.waitLeader(except(c.ids, down)...)
	time.Sleep(10 * check)
	for _, id := range except(c.ids, down) {
		if v := c.node(id).Status().ClusterVersion; v != 1 {
			t.Fatalf("node %d at cluster version %d while member %d cannot answer; want 1", id, v, down)
		}
	}
	c.start(down)
	waitFor(t, "cluster version 2 once every member answers", func() bool {
		for _, v := range c.clusterVersions() {
			if v != 2 {
				return false
			}
		}
		return true
	})
}

func except(ids []uint64, x uint64) []uint64 {
	var out []uint64
	for _, id := range ids {
		if id != x {
			out = append(out, id)
		}
	}
	return out
}

// TestApplyOfANewerClusterVersionStopsTheNode: an entry that needs a
// cluster version above this binary's stops the node (unhealthy, proposals
// fail) instead of being applied or skipped.
func TestApplyOfANewerClusterVersionStopsTheNode(t *testing.T) {
	c := startInmemCluster(t, 1, nil)
	c.waitLeader()
	n := c.node(1)
	if err := n.rn.Propose(entry.SetClusterVersion(n.clock.stamp(), entry.ClusterVersion+1)); err != nil {
		t.Fatal(err)
	}
	n.rn.Pump()
	waitFor(t, "the node stopped", func() bool { return !n.Status().Healthy })
	if err := *n.failed.Load(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("needs cluster version %d", entry.ClusterVersion+1)) {
		t.Fatalf("failure: %v; want one naming the cluster version", err)
	}
	if _, err := c.propose(1, time.Second, "after"); err == nil {
		t.Fatal("a proposal succeeded on a node stopped by an entry it cannot apply")
	}
}

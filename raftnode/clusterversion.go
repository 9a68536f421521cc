package raftnode

import (
	"context"
	"sync"
	"time"

	"github.com/keystore-dev/keystore/entry"
)

// The cluster version (package entry) is the log format every member
// supports, as etcd's: the leader asks every member, voters and learners,
// which versions its binary applies (Hello's max_cluster_version; a binary
// from before cluster versions says nothing, meaning 1) every
// VersionCheckInterval, on becoming leader and after each membership
// change; when all answer and the lowest answer is above the cluster
// version it applied, it proposes SetClusterVersion(lowest) through the
// log. Every replica records the rise in the apply batch of that entry, so
// all switch at the same index, and a replica whose binary cannot apply an
// entry stops instead (storage).
//
// NB: the leader raises the version only when every member in its
// configuration answered: a member that does not answer (down, cut off)
// holds the version back, since it may run an older binary. A member added
// between the answers and the commit of the rise is not asked; the server
// refuses to add a node that supports less than the cluster version
// (MemberAdd), and an older binary that joins anyway stops at the first
// entry it cannot apply.

// clusterVersioner is a StateMachine that records the cluster version
// (storage does). Without it the cluster version is 1.
type clusterVersioner interface {
	ClusterVersion() uint32
}

// ClusterVersion returns the cluster version as this node applied it: 1
// until the first rise.
func (n *Node) ClusterVersion() uint32 {
	if cv, ok := n.sm.(clusterVersioner); ok {
		return entry.EffectiveVersion(cv.ClusterVersion())
	}
	return entry.MinClusterVersion
}

// kickVersionCheck asks versionLoop for a check now, without blocking.
func (n *Node) kickVersionCheck() {
	select {
	case n.versionKick <- struct{}{}:
	default:
	}
}

// versionLoop raises the cluster version while this node leads (see
// above).
func (n *Node) versionLoop() {
	defer n.done.Done()
	if n.cfg.VersionCheckInterval < 0 {
		return
	}
	t := time.NewTicker(n.cfg.VersionCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stopc:
			return
		case <-t.C:
		case <-n.versionKick:
		}
		if n.lead.Load() == n.cfg.ID {
			n.maybeRaiseClusterVersion()
		}
	}
}

// maybeRaiseClusterVersion asks every member which cluster versions it
// supports and proposes a rise to the lowest, if that is above the cluster
// version applied here.
func (n *Node) maybeRaiseClusterVersion() {
	cur := n.ClusterVersion()
	target := n.cfg.MaxClusterVersion
	if target <= cur {
		return
	}
	st := n.rn.Status()
	ids := st.Config.Voters.IDs()
	for id := range st.Config.Learners {
		ids[id] = struct{}{}
	}
	timeout := n.cfg.TickInterval * time.Duration(n.cfg.ElectionTicks)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		missing []uint64
	)
	for id := range ids {
		if id == n.cfg.ID {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := n.trans.Hello(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				missing = append(missing, id)
				return
			}
			target = min(target, entry.EffectiveVersion(h.MaxClusterVersion))
		}()
	}
	wg.Wait()
	if len(missing) > 0 {
		n.logger.Debug("cluster version not raised: members did not answer", "missing", len(missing), "cluster_version", cur)
		return
	}
	if target <= cur || n.lead.Load() != n.cfg.ID {
		return
	}
	n.logger.Info("every member supports a higher cluster version: raising it through the log", "from", cur, "to", target)
	// Like an idle tick: best effort, the next check tries again until the
	// rise is applied here.
	if n.rn.Propose(entry.SetClusterVersion(n.clock.stamp(), target)) == nil {
		n.rn.Pump()
	}
}

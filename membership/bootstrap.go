package membership

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"
)

// Bootstrapping by --bootstrap-expect N: nodes that find each other by
// gossip form one cluster once N of them are present, and only if none
// of them belongs to a cluster already. Two rules make it one cluster:
//
//   - Agreement before action. A node that sees N candidates (alive, in no
//     cluster, expecting the same N) proposes the N smallest ids among them
//     and gossips the proposal's hash. It bootstraps only once every node
//     of its proposal gossips the same hash, so all of them bootstrap the
//     same configuration, which is one cluster (the cluster id is the
//     hash). A node never changes its proposal: one that others may have
//     counted on stays counted on.
//   - A cluster found is joined, never doubled. A node that sees a member
//     of a cluster other than its proposal's joins it instead of
//     bootstrapping; so does a node left out of the N.
//
// Start exactly N nodes with --bootstrap-expect N (and any number later
// with --join). More at once may leave some waiting for a proposal that
// never completes (each one says so in its log); never two clusters.

// Step is what a node waiting to bootstrap does next.
type Step struct {
	// Propose is set when the node should gossip this proposal (its
	// members, by id); from then on it passes it back as proposed.
	Propose []Member
	// Bootstrap is set when every member of the proposal agreed: the node
	// bootstraps a cluster of exactly those members, with cluster id
	// SetID of their ids.
	Bootstrap bool
	// Join is set to the id of a cluster the node should join instead.
	Join uint64
}

// NextBootstrapStep decides what self does next, given the proposal it
// made (nil if none yet), the members gossip shows (self included) and
// the number expected.
func NextBootstrapStep(self Member, proposed []Member, members []Member, expect int) Step {
	var ours uint64
	if len(proposed) > 0 {
		ours = SetID(ids(proposed))
	}
	live := make(map[uint64]Member)
	for _, m := range members {
		if m.State != StateAlive && m.ID != self.ID {
			continue
		}
		live[m.ID] = m
		if m.ClusterID != 0 && m.ClusterID != ours {
			return Step{Join: m.ClusterID}
		}
	}
	if len(proposed) == 0 {
		// Candidates: this node and every live one in no cluster that
		// expects the same N, whether it proposed already or not (a
		// proposal is fixed, and may be this very set).
		var cands []Member
		for _, m := range live {
			if m.ID == self.ID || m.ClusterID == 0 && m.BootstrapExpect == expect {
				cands = append(cands, m)
			}
		}
		if len(cands) < expect {
			return Step{}
		}
		slices.SortFunc(cands, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
		set := cands[:expect]
		if !slices.ContainsFunc(set, func(m Member) bool { return m.ID == self.ID }) {
			return Step{} // left out: it joins once the others formed the cluster
		}
		return Step{Propose: slices.Clone(set)}
	}
	for _, p := range proposed {
		m, ok := live[p.ID]
		if !ok {
			return Step{}
		}
		if m.ID != self.ID && m.Proposal != ours {
			return Step{}
		}
	}
	return Step{Bootstrap: true}
}

// SetID is the cluster id of a cluster bootstrapped from the nodes ids
// (in any order): a hash, never 0.
func SetID(ids []uint64) uint64 {
	s := slices.Clone(ids)
	slices.Sort(s)
	h := sha256.New()
	var b [8]byte
	for _, id := range s {
		binary.BigEndian.PutUint64(b[:], id)
		h.Write(b[:])
	}
	v := binary.BigEndian.Uint64(h.Sum(nil))
	if v == 0 {
		v = 1
	}
	return v
}

func ids(ms []Member) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

package membership

import (
	"slices"
	"testing"
)

func cand(id uint64, expect int) Member {
	return Member{ID: id, BootstrapExpect: expect, State: StateAlive}
}

func TestNextBootstrapStep(t *testing.T) {
	a, b, c, d := cand(1, 3), cand(2, 3), cand(3, 3), cand(4, 3)
	set := []Member{a, b, c}
	h := SetID([]uint64{1, 2, 3})
	with := func(m Member, f func(*Member)) Member { f(&m); return m }
	proposing := func(m Member) Member { return with(m, func(m *Member) { m.Proposal = h }) }

	// Too few: wait.
	if st := NextBootstrapStep(a, nil, []Member{a, b}, 3); st.Propose != nil || st.Bootstrap || st.Join != 0 {
		t.Fatalf("two of three: %+v", st)
	}
	// Three: propose the three.
	st := NextBootstrapStep(a, nil, []Member{a, b, c}, 3)
	if !slices.Equal(ids(st.Propose), []uint64{1, 2, 3}) {
		t.Fatalf("three of three: %+v", st)
	}
	// Four: the three smallest; the fourth is left out and waits.
	if st := NextBootstrapStep(d, nil, []Member{a, b, c, d}, 3); st.Propose != nil {
		t.Fatalf("the fourth proposed: %+v", st)
	}
	// A node expecting another N does not count.
	if st := NextBootstrapStep(a, nil, []Member{a, b, cand(3, 5)}, 3); st.Propose != nil {
		t.Fatalf("counted a node expecting 5: %+v", st)
	}
	// Proposed, but not all agree yet: wait; all agree: bootstrap.
	if st := NextBootstrapStep(proposing(a), set, []Member{proposing(a), proposing(b), c}, 3); st.Bootstrap {
		t.Fatal("bootstrapped before c agreed")
	}
	if st := NextBootstrapStep(proposing(a), set, []Member{proposing(a), proposing(b), proposing(c)}, 3); !st.Bootstrap {
		t.Fatalf("all agreed: %+v", st)
	}
	// One of the set bootstrapped already (cluster h): still bootstrap.
	boot := with(proposing(b), func(m *Member) { m.ClusterID = h })
	if st := NextBootstrapStep(proposing(a), set, []Member{proposing(a), boot, proposing(c)}, 3); !st.Bootstrap {
		t.Fatalf("a member bootstrapped our set: %+v", st)
	}
	// A member of the set died before agreeing: wait (never bootstrap
	// without it).
	dead := with(proposing(c), func(m *Member) { m.State = StateDead })
	if st := NextBootstrapStep(proposing(a), set, []Member{proposing(a), proposing(b), dead}, 3); st.Bootstrap {
		t.Fatal("bootstrapped without a dead member's agreement")
	}
	// A cluster exists: join it, proposed or not.
	other := with(cand(9, 3), func(m *Member) { m.ClusterID = 42 })
	if st := NextBootstrapStep(a, nil, []Member{a, b, c, other}, 3); st.Join != 42 {
		t.Fatalf("a cluster exists: %+v", st)
	}
	if st := NextBootstrapStep(proposing(a), set, []Member{proposing(a), proposing(b), proposing(c), other}, 3); st.Join != 42 {
		t.Fatalf("a cluster exists (after proposing): %+v", st)
	}
	// The left-out fourth joins once the three formed theirs.
	formed := []Member{with(proposing(a), func(m *Member) { m.ClusterID = h }), b, c, d}
	if st := NextBootstrapStep(d, nil, formed, 3); st.Join != h {
		t.Fatalf("the fourth after the bootstrap: %+v", st)
	}
	if SetID([]uint64{3, 1, 2}) != h || SetID([]uint64{1, 2, 4}) == h {
		t.Fatal("SetID depends on order or ignores members")
	}
}

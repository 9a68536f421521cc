package membership

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// start starts a gossip node of cluster on a free loopback port.
func start(t *testing.T, id, cluster uint64, keys ...[]byte) *Gossip {
	t.Helper()
	g, err := Start(Config{
		Self:     Member{ID: id, Name: fmt.Sprintf("n%d", id), ClusterID: cluster, PeerAddr: fmt.Sprintf("127.0.0.1:%d", 7000+id), ClientAddr: fmt.Sprintf("127.0.0.1:%d", 8000+id), Role: RoleVoter},
		BindAddr: "127.0.0.1:0",
		Keys:     keys,
		Fast:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Shutdown() })
	return g
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func state(g *Gossip, id uint64) State {
	m, ok := g.Lookup(id)
	if !ok {
		return StateUnknown
	}
	return m.State
}

func TestMembersSeeEachOtherAndUpdates(t *testing.T) {
	a, b, c := start(t, 1, 7, nil...), start(t, 2, 7), start(t, 3, 7)
	if _, err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join([]string{b.Addr()}); err != nil {
		t.Fatal(err)
	}
	for _, g := range []*Gossip{a, b, c} {
		eventually(t, "every node sees three alive", func() bool {
			alive := 0
			for _, m := range g.Members() {
				if m.State == StateAlive {
					alive++
				}
			}
			return alive == 3
		})
	}
	m, ok := a.Lookup(3)
	if !ok || m.Name != "n3" || m.ClusterID != 7 || m.PeerAddr != "127.0.0.1:7003" || m.ClientAddr != "127.0.0.1:8003" || m.Role != RoleVoter || m.GossipAddr != c.Addr() {
		t.Fatalf("a's record of c: %+v", m)
	}
	// A node that restarts on a new peer address gossips it.
	if err := c.Update(func(m *Member) { m.PeerAddr = "127.0.0.1:9999"; m.Role = RoleLearner }); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a learns c's new address", func() bool {
		m, _ := a.Lookup(3)
		return m.PeerAddr == "127.0.0.1:9999" && m.Role == RoleLearner
	})
}

func TestFailureDetectedLeaveSeen(t *testing.T) {
	a, b, c := start(t, 1, 7), start(t, 2, 7), start(t, 3, 7)
	for _, g := range []*Gossip{b, c} {
		if _, err := g.Join([]string{a.Addr()}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a sees c", func() bool { return state(a, 3) == StateAlive })
	_ = c.Shutdown() // a crash: no goodbye
	eventually(t, "a finds c dead", func() bool { return state(a, 3) == StateDead })
	if err := b.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees b left", func() bool { return state(a, 2) == StateLeft })
}

func TestRestartOnNewAddressKeepsIdentity(t *testing.T) {
	a, c := start(t, 1, 7), start(t, 3, 7)
	if _, err := c.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees c", func() bool { return state(a, 3) == StateAlive })
	old := c.Addr()
	_ = c.Shutdown()
	eventually(t, "a finds c dead", func() bool { return state(a, 3) == StateDead })
	c2 := start(t, 3, 7) // same id, new port
	if _, err := c2.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees c alive at its new address", func() bool {
		m, _ := a.Lookup(3)
		return m.State == StateAlive && m.GossipAddr == c2.Addr() && m.GossipAddr != old
	})
}

func TestAnotherClusterIsRefused(t *testing.T) {
	a, b := start(t, 1, 7), start(t, 2, 7)
	if _, err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	x := start(t, 9, 8) // a member of cluster 8
	if _, err := x.Join([]string{a.Addr()}); err == nil {
		t.Fatal("a node of another cluster merged into the pool")
	}
	// A node of no cluster yet (joining) is accepted.
	j := start(t, 5, 0)
	if _, err := j.Join([]string{a.Addr()}); err != nil {
		t.Fatalf("a joining node was refused: %v", err)
	}
	eventually(t, "b sees the joining node", func() bool { return state(b, 5) == StateAlive })
	time.Sleep(500 * time.Millisecond) // gossip rounds in which x could spread
	for _, g := range []*Gossip{a, b} {
		if _, ok := g.Lookup(9); ok {
			t.Fatalf("the node of another cluster is in the pool's view")
		}
	}
}

func TestGossipKey(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a := start(t, 1, 7, k1)
	if _, err := start(t, 2, 7).Join([]string{a.Addr()}); err == nil {
		t.Fatal("a node without the key joined")
	}
	if _, err := start(t, 3, 7, k2).Join([]string{a.Addr()}); err == nil {
		t.Fatal("a node with another key joined")
	}
	b := start(t, 4, 7, k1)
	if _, err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	// Rotation: install k2 beside k1 everywhere, make it primary
	// everywhere, then drop k1; the pool stays one throughout.
	for _, g := range []*Gossip{a, b} {
		if err := g.SetKeys([][]byte{k1, k2}); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []*Gossip{a, b} {
		if err := g.SetKeys([][]byte{k2, k1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []*Gossip{a, b} {
		if err := g.SetKeys([][]byte{k2}); err != nil {
			t.Fatal(err)
		}
	}
	c := start(t, 5, 7, k2)
	if _, err := c.Join([]string{a.Addr()}); err != nil {
		t.Fatalf("a node with the new key could not join: %v", err)
	}
	eventually(t, "b sees the new node", func() bool { return state(b, 5) == StateAlive })
	if _, err := start(t, 6, 7, k1).Join([]string{a.Addr()}); err == nil {
		t.Fatal("the retired key still works")
	}
}

func TestHostNamesResolve(t *testing.T) {
	g, err := Start(Config{Self: Member{ID: 1}, BindAddr: "localhost:0", AdvertiseAddr: "localhost:0", Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Shutdown()
	if host, _, _ := strings.Cut(g.Addr(), ":"); host != "127.0.0.1" {
		t.Fatalf("advertised %s; want 127.0.0.1:port", g.Addr())
	}
}

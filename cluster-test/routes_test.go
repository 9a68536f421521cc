package clustertest

import (
	"context"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/cluster-test/harness"
)

// TestPeerTrafficStaysOnTheProxies: after every node has published its own
// peer address in the log, and while gossip (which the proxies do not
// carry) finds every node alive at the peer address it gossips, the nodes
// still reach each other through the fault proxies they were given
// (--peer-route: a route by name wins over gossip and log): isolating the
// leader at its proxies makes the others elect a new leader. Were the
// published or gossiped addresses dialled instead, the faults of the fault
// suite would not reach the peer links.
func TestPeerTrafficStaysOnTheProxies(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin, err := harness.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := harness.Start(harness.Config{Binary: bin, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	// Every member published itself (its client address is in the log),
	// and every node's gossip finds every member alive.
	for {
		st, err := c.Status(ctx, c.Names[0])
		published := err == nil && len(st.GetMembers()) == len(c.Names)
		for _, m := range st.GetMembers() {
			published = published && m.GetClientAddress() != ""
		}
		for _, n := range c.Names {
			ms, err := c.MemberList(ctx, n)
			published = published && err == nil && len(ms) == len(c.Names)
			for _, m := range ms {
				published = published && m.GetGossipState() == "alive"
			}
		}
		if published {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("members never all published and alive in gossip: %v %v", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	old := c.Leader(ctx)
	c.Isolate(old)
	for {
		var lead string
		for _, n := range c.Names {
			if n == old {
				continue
			}
			if st, err := c.Status(ctx, n); err == nil && st.GetLeader() != "" && st.GetLeader() != old {
				lead = st.GetLeader()
			}
		}
		if lead != "" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no new leader after isolating %s at its proxies: peer traffic bypasses them", old)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.HealLinks()
}

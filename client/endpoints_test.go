package client

import (
	"context"
	"slices"
	"testing"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/connectivity"
)

func members(addrs ...string) []*keystorev1.Member {
	var out []*keystorev1.Member
	for i, a := range addrs {
		out = append(out, &keystorev1.Member{Name: string(rune('a' + i)), ClientAddress: a})
	}
	return out
}

func (c *Client) openCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.open)
}

// TestAdoptRetiresWhenUnused: the set follows the members (seeds always
// kept, unpublished addresses skipped, repeats dropped); an endpoint that
// leaves it keeps its connection while a call uses it, takes no new call,
// is closed when the last returns; Close closes the rest, retired ones
// included.
func TestAdoptRetiresWhenUnused(t *testing.T) {
	const seed, a, b, d = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"
	c, err := New(context.Background(), Config{Endpoints: []string{seed, seed}, LeaderRefresh: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.Endpoints(); !slices.Equal(got, []string{seed}) {
		t.Fatalf("Endpoints() = %v; want the seed once", got)
	}

	c.adopt(members(b, "", a, a))
	if got, want := c.set.Load().addrs(), []string{seed, a, b}; !slices.Equal(got, want) {
		t.Fatalf("set %v; want %v (the seed, then the members sorted)", got, want)
	}
	ea, eb := c.set.Load().find(a), c.set.Load().find(b)
	if !ea.acquire() {
		t.Fatal("acquire of a live endpoint failed")
	}

	c.adopt(members(b, d)) // a and b readdressed or removed; the seed unlisted
	if got, want := c.Endpoints(), []string{seed, b, d}; !slices.Equal(got, want) {
		t.Fatalf("Endpoints() = %v; want %v", got, want)
	}
	if c.set.Load().find(b) != eb {
		t.Fatal("b was dialled again; want the endpoint kept")
	}
	if ea.conn.GetState() == connectivity.Shutdown {
		t.Fatal("a was closed while a call used it")
	}
	if ea.acquire() {
		t.Fatal("a retired endpoint took a new call")
	}
	if n := c.openCount(); n != 4 {
		t.Fatalf("%d endpoints open; want 4 (seed, a in use, b, d)", n)
	}
	ea.release()
	if ea.conn.GetState() != connectivity.Shutdown {
		t.Fatal("a retired endpoint was not closed when its last call returned")
	}
	if n := c.openCount(); n != 3 {
		t.Fatalf("%d endpoints open; want 3", n)
	}

	// Unused: closed at once. In use at Close: closed by Close.
	ed := c.set.Load().find(d)
	if !eb.acquire() {
		t.Fatal("acquire of a live endpoint failed")
	}
	c.adopt(nil)
	if ed.conn.GetState() != connectivity.Shutdown {
		t.Fatal("an unused endpoint was not closed when it left the set")
	}
	if got := c.Endpoints(); !slices.Equal(got, []string{seed}) {
		t.Fatalf("Endpoints() = %v; want the seed alone", got)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if eb.conn.GetState() != connectivity.Shutdown || c.openCount() != 0 {
		t.Fatal("Close left a connection open")
	}
	eb.release() // the call returns after Close: nothing left to close
}

package client_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
)

// discoveryRefresh is the LeaderRefresh of the discovery tests: the
// client asks for the members this often.
const discoveryRefresh = 100 * time.Millisecond

func newDiscoveringClient(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	if cfg.LeaderRefresh == 0 {
		cfg.LeaderRefresh = discoveryRefresh
	}
	c, err := client.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitEndpoints waits until c.Endpoints() satisfies ok, or fails the test
// after 5s (50 refresh periods).
func waitEndpoints(t *testing.T, c *client.Client, what string, ok func([]string) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := c.Endpoints()
		if ok(got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Endpoints() = %v after 5s; want %s", got, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func mustClaim(t *testing.T, c *client.Client, key string) {
	t.Helper()
	res, err := c.Claim(ctxT(t, 10*time.Second), client.ClaimRequest{Namespace: "discovery", Key: key})
	if err != nil || res.Outcome != client.Acquired {
		t.Fatalf("Claim %s: %+v, %v; want Acquired", key, res, err)
	}
}

// TestDiscoveryFromOneEndpoint: a client given one node of three learns
// the other two, and goes on working through them once that node stops.
func TestDiscoveryFromOneEndpoint(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	seed := tc.Follower()
	c := newDiscoveringClient(t, client.Config{Endpoints: []string{tc.Endpoint(seed)}})

	all := sorted(tc.Endpoints())
	waitEndpoints(t, c, fmt.Sprint("every member's: ", all), func(got []string) bool { return slices.Equal(got, all) })
	mustClaim(t, c, "before")

	tc.StopNode(seed)
	for i := range 5 {
		mustClaim(t, c, fmt.Sprintf("after-%d", i))
	}
	// The stopped node is still a member, and a seed: it stays.
	if got := c.Endpoints(); !slices.Equal(got, all) {
		t.Fatalf("Endpoints() = %v after the seed stopped; want %v", got, all)
	}
}

// TestDiscoveryFollowsMembership: a node added at runtime joins the
// client's endpoints, a member removed leaves them, and calls go on.
func TestDiscoveryFollowsMembership(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	seed := tc.Names[0]
	c := newDiscoveringClient(t, client.Config{Endpoints: []string{tc.Endpoint(seed)}})
	waitEndpoints(t, c, "three", func(got []string) bool { return len(got) == 3 })

	tc.AddNode("n4", seed)
	added := tc.Endpoint("n4")
	waitEndpoints(t, c, "n4's "+added+" among them", func(got []string) bool { return slices.Contains(got, added) })
	mustClaim(t, c, "after-add")

	// Remove a follower other than the seed (and n4, which may still be
	// a learner).
	lead := tc.Leader()
	var victim string
	for _, n := range tc.Names[1:3] {
		if n != lead {
			victim = n
			break
		}
	}
	cc := tc.ClusterClient(seed)
	list, err := cc.MemberList(ctxT(t, 5*time.Second), &keystorev1.MemberListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for _, m := range list.GetMembers() {
		if m.GetName() == victim {
			id = m.GetId()
		}
	}
	if id == "" {
		t.Fatalf("%s not in MemberList: %v", victim, list.GetMembers())
	}
	if _, err := cc.MemberRemove(ctxT(t, 10*time.Second), &keystorev1.MemberRemoveRequest{Id: id}); err != nil {
		t.Fatalf("MemberRemove %s: %v", victim, err)
	}
	removed := tc.Endpoint(victim)
	waitEndpoints(t, c, victim+"'s "+removed+" gone", func(got []string) bool {
		return len(got) == 3 && !slices.Contains(got, removed)
	})
	mustClaim(t, c, "after-remove")
}

// TestNoDiscoveryKeepsEndpoints: with NoDiscovery, or a negative
// LeaderRefresh, the client calls exactly the endpoints it was given and
// never asks for the members, while a discovering client beside it learns
// them.
func TestNoDiscoveryKeepsEndpoints(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	var mu sync.Mutex
	memberLists := map[string]int{}
	count := func(name string) grpc.DialOption {
		return grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if method == keystorev1.ClusterService_MemberList_FullMethodName {
				mu.Lock()
				memberLists[name]++
				mu.Unlock()
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		})
	}
	given := []string{tc.Endpoint("n2"), tc.Endpoint("n1")}
	off := newDiscoveringClient(t, client.Config{Endpoints: given, NoDiscovery: true, DialOptions: []grpc.DialOption{count("off")}})
	never := newDiscoveringClient(t, client.Config{Endpoints: given[:1], LeaderRefresh: -1, DialOptions: []grpc.DialOption{count("never")}})
	on := newDiscoveringClient(t, client.Config{Endpoints: given[:1], DialOptions: []grpc.DialOption{count("on")}})

	all := sorted(tc.Endpoints())
	waitEndpoints(t, on, fmt.Sprint("every member's: ", all), func(got []string) bool { return slices.Equal(got, all) })
	// Three more refresh periods of the discovering client, for the
	// others to (wrongly) discover.
	lists := func() int {
		mu.Lock()
		defer mu.Unlock()
		return memberLists["on"]
	}
	deadline := time.Now().Add(5 * time.Second)
	for base := lists(); lists() < base+3; {
		if time.Now().After(deadline) {
			t.Fatal("the discovering client stopped asking for the members")
		}
		time.Sleep(discoveryRefresh / 2)
	}
	mustClaim(t, off, "off")
	mustClaim(t, never, "never")
	if got, want := off.Endpoints(), sorted(given); !slices.Equal(got, want) {
		t.Errorf("NoDiscovery: Endpoints() = %v; want %v", got, want)
	}
	if got, want := never.Endpoints(), given[:1]; !slices.Equal(got, want) {
		t.Errorf("negative LeaderRefresh: Endpoints() = %v; want %v", got, want)
	}
	if got := off.Status(ctxT(t, 5*time.Second)); len(got) != 2 {
		t.Errorf("NoDiscovery: Status() has %d rows; want 2", len(got))
	}
	mu.Lock()
	defer mu.Unlock()
	if memberLists["off"] != 0 || memberLists["never"] != 0 {
		t.Errorf("MemberList calls: %v; want none from the clients without discovery", memberLists)
	}
}

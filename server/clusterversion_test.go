package server_test

import (
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/entry"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestClusterVersionInStatusAndJoinRefusal: a cluster of this binary
// raises its cluster version to entry.ClusterVersion by itself, every
// node's Status says so, and a node joining with a binary that supports
// less (one from before cluster versions says nothing) is refused
// FAILED_PRECONDITION naming both versions.
func TestClusterVersionInStatusAndJoinRefusal(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{})
	c.WaitServing(20 * time.Second)
	waitFor(t, "cluster version 2 in every node's Status", func() bool {
		for _, n := range c.Names {
			st, err := c.ClusterClient(n).Status(ctxT(t, 5*time.Second), &keystorev1.StatusRequest{})
			if err != nil || st.GetClusterVersion() != entry.ClusterVersion {
				return false
			}
		}
		return true
	})

	req := &keystorev1.MemberAddRequest{Name: "old", PeerAddress: "127.0.0.1:1", Id: "abc"}
	for _, tc := range []struct {
		name string
		md   []string
	}{
		{"a binary from before cluster versions", nil},
		{"a binary that supports 1", []string{"keystore-max-cluster-version", "1"}},
	} {
		ctx := ctxT(t, 10*time.Second)
		if tc.md != nil {
			ctx = metadata.AppendToOutgoingContext(ctx, tc.md...)
		}
		_, err := c.ClusterClient(c.Follower()).MemberAdd(ctx, req)
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "cluster version 2") || !strings.Contains(err.Error(), "up to 1") {
			t.Fatalf("%s: MemberAdd: %v; want FAILED_PRECONDITION naming both versions", tc.name, err)
		}
	}
	if len(members(t, c, c.Leader())) != 3 {
		t.Fatal("a refused MemberAdd added a member")
	}
}

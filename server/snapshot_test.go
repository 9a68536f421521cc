package server_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
)

// TestClusterFollowerCatchesUpOnAStateOfManyChunks: a follower that missed
// the compacted log catches up on a state of many megabytes, which travels
// as a stream of chunks beside raft and is installed whole; every stored
// response is there, byte for byte.
func TestClusterFollowerCatchesUpOnAStateOfManyChunks(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Raft: raftnode.Config{SnapshotEntries: 20, KeepEntries: 5}})
	lead := c.Leader()
	follower := c.Follower()
	c.StopNode(follower)
	const records = 24
	body := func(i int) []byte {
		return bytes.Repeat([]byte{byte('a' + i%26)}, 512<<10+i) // 12 MiB in all
	}
	cl := c.Client(lead)
	for i := range records {
		key := fmt.Sprintf("big-%d", i)
		res, err := cl.Claim(ctxT(t, 10*time.Second), &keystorev1.ClaimRequest{Namespace: "test", Key: key})
		if err != nil {
			t.Fatalf("claim %s: %v", key, err)
		}
		if _, err := cl.Complete(ctxT(t, 10*time.Second), &keystorev1.CompleteRequest{Namespace: "test", Key: key, Token: res.Token,
			Response: &keystorev1.Response{Code: 200, Body: body(i)}}); err != nil {
			t.Fatalf("complete %s: %v", key, err)
		}
	}
	c.StartNode(follower)
	c.WaitApplied(follower, c.Server(lead).Status().Applied, 60*time.Second)
	if got := c.Server(follower).Status().SnapshotsApplied; got == 0 {
		t.Fatalf("follower caught up without a snapshot; want at least one")
	}
	for i := range records {
		key := fmt.Sprintf("big-%d", i)
		got, err := c.Client(follower).Get(ctxT(t, 5*time.Second), &keystorev1.GetRequest{
			Namespace: "test", Key: key, Consistency: keystorev1.Consistency_CONSISTENCY_STALE})
		if err != nil {
			t.Fatalf("stale get of %s on the caught-up follower: %v", key, err)
		}
		if !bytes.Equal(got.GetRecord().GetResponse().GetBody(), body(i)) {
			t.Fatalf("%s on the follower: body of %d bytes differs from the %d written", key, len(got.GetRecord().GetResponse().GetBody()), len(body(i)))
		}
	}
	c.AssertSameState()
}

package storage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
)

// indexEntries returns the expiry index as "ns/key@expires_at" strings.
func indexEntries(t *testing.T, s *Store) []string {
	t.Helper()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: expiryStart, UpperBound: expiryEnd})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out []string
	for valid := it.First(); valid; valid = it.Next() {
		at, ns, key, err := splitExpiryKey(it.Key())
		if err != nil {
			t.Fatalf("bad index key %x: %v", it.Key(), err)
		}
		out = append(out, fmt.Sprintf("%s/%s@%d", ns, key, at))
	}
	return out
}

// checkIndex asserts that the index holds exactly one entry per stored
// record, at its expires_at, and that the record count agrees.
func checkIndex(t *testing.T, s *Store) {
	t.Helper()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecord}, UpperBound: []byte{prefixRecord + 1}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for valid := it.First(); valid; valid = it.Next() {
		ns, key, err := splitRecordKey(it.Key())
		if err != nil {
			t.Fatal(err)
		}
		rec := &statev1.Record{}
		if err := (protoValue{rec}).Unmarshal(it.Value()); err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprintf("%s/%s@%d", ns, key, rec.ExpiresAt)] = true
	}
	_ = it.Close()
	got := indexEntries(t, s)
	if len(got) != len(want) {
		t.Fatalf("index has %d entries %v; want %d, one per record %v", len(got), got, len(want), want)
	}
	for _, g := range got {
		if !want[g] {
			t.Fatalf("index entry %s matches no record (records %v)", g, want)
		}
	}
	if n := s.StoredRecords(); n != uint64(len(want)) {
		t.Fatalf("StoredRecords() = %d; want %d", n, len(want))
	}
}

func cmdComplete(key string, token uint64, retention int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
		Namespace: "ns", Key: key, Token: token, Retention: retention, Response: &statev1.Response{Code: 200},
	}}}
}

func cmdClaim(key string, lease, retention int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
		Namespace: "ns", Key: key, Lease: lease, Retention: retention,
	}}}
}

func cmdExpire(upTo int64, limit uint32) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: upTo, Limit: limit}}}
}

// apply1 applies one entry and returns its result.
func apply1(t *testing.T, s *Store, e raftpb.Entry) *statev1.Result {
	t.Helper()
	return mustApply(t, s, []raftpb.Entry{e}, nil)[0]
}

func TestExpiryIndexFollowsEveryTransition(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	const base = int64(1_000_000)

	// claim: an entry at created+retention.
	claimEntry := l.cmd(base, cmdClaim("a", 10, 100))
	tokA := apply1(t, s, claimEntry).Record.Token
	checkIndex(t, s)
	if got := indexEntries(t, s); got[0] != fmt.Sprintf("ns/a@%d", base+100) {
		t.Fatalf("after claim: index %v; want ns/a@%d", got, base+100)
	}
	// heartbeat: expires_at unchanged, index unchanged.
	apply1(t, s, l.cmd(base+5, &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{Namespace: "ns", Key: "a", Token: tokA, Lease: 10}}}))
	checkIndex(t, s)
	// complete: retention restarts, the entry moves.
	apply1(t, s, l.cmd(base+7, cmdComplete("a", tokA, 50)))
	checkIndex(t, s)
	if got := indexEntries(t, s); got[0] != fmt.Sprintf("ns/a@%d", base+57) {
		t.Fatalf("after complete: index %v; want ns/a@%d", got, base+57)
	}
	// takeover: a second key, lease ends, another claim takes it over.
	tokB := apply1(t, s, l.cmd(base+10, cmdClaim("b", 5, 100))).Record.Token
	res := apply1(t, s, l.cmd(base+20, cmdClaim("b", 5, 200)))
	if res.Outcome != statev1.Outcome_OUTCOME_ACQUIRED || res.Record.Token == tokB {
		t.Fatalf("takeover: got %v", res)
	}
	checkIndex(t, s)
	// release: record and entry leave.
	apply1(t, s, l.cmd(base+21, &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "ns", Key: "b", Token: res.Record.Token}}}))
	checkIndex(t, s)
	if n := s.StoredRecords(); n != 1 {
		t.Fatalf("StoredRecords after release = %d; want 1", n)
	}
	// claim over an expired, unswept record: the old entry is replaced.
	res = apply1(t, s, l.cmd(base+57, cmdClaim("a", 10, 100)))
	if res.Outcome != statev1.Outcome_OUTCOME_ACQUIRED {
		t.Fatalf("claim over expired record: got %v; want ACQUIRED", res.Outcome)
	}
	checkIndex(t, s)
	if got := indexEntries(t, s); len(got) != 1 || got[0] != fmt.Sprintf("ns/a@%d", base+157) {
		t.Fatalf("after re-claim: index %v; want only ns/a@%d", got, base+157)
	}
}

func TestExpireBoundaries(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	const base = int64(1_000_000)
	apply1(t, s, l.cmd(base, cmdClaim("k", 10, 100))) // expires at base+100

	// Log time base+99: nothing due, whatever up_to says.
	res := apply1(t, s, l.cmd(base+99, cmdExpire(base+1000, 10)))
	if res.Expired != 0 || s.StoredRecords() != 1 {
		t.Fatalf("expire before expires_at (log time bounds up_to): expired %d, stored %d; want 0, 1", res.Expired, s.StoredRecords())
	}
	// Log time base+200, but up_to base+99: nothing.
	res = apply1(t, s, l.cmd(base+200, cmdExpire(base+99, 10)))
	if res.Expired != 0 {
		t.Fatalf("expire up to expires_at-1: expired %d; want 0", res.Expired)
	}
	// Exactly at expires_at: expired (a record lives while now < expires_at).
	res = apply1(t, s, l.cmd(base+200, cmdExpire(base+100, 10)))
	if res.Expired != 1 || res.More || s.StoredRecords() != 0 {
		t.Fatalf("expire at expires_at: %v, stored %d; want 1 expired, no more, 0 stored", res, s.StoredRecords())
	}
	checkIndex(t, s)
	if _, ok, _ := s.NextExpiry(); ok {
		t.Fatal("NextExpiry after sweeping everything: ok; want empty")
	}
}

func TestExpireIsBatchedAndOldestFirst(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	const base = int64(1_000_000)
	var ents []raftpb.Entry
	for i := 0; i < 25; i++ {
		ents = append(ents, l.cmd(base+int64(i), cmdClaim(fmt.Sprintf("k%02d", i), 10, 100)))
	}
	ents = append(ents, l.cmd(base, cmdClaim("late", 10, 10_000)))
	mustApply(t, s, ents, nil)
	if at, ok, err := s.NextExpiry(); err != nil || !ok || at != base+100 {
		t.Fatalf("NextExpiry = %d, %v, %v; want %d", at, ok, err, base+100)
	}
	now := base + 1000
	res := apply1(t, s, l.cmd(now, cmdExpire(now, 10)))
	if res.Expired != 10 || !res.More {
		t.Fatalf("first batch: expired %d more %v; want 10, true", res.Expired, res.More)
	}
	// The oldest went first: k00..k09 are gone, k10 is next.
	if at, _, _ := s.NextExpiry(); at != base+110 {
		t.Fatalf("NextExpiry after first batch = %d; want %d", at, base+110)
	}
	checkIndex(t, s)
	res = apply1(t, s, l.cmd(now, cmdExpire(now, 10)))
	res2 := apply1(t, s, l.cmd(now, cmdExpire(now, 10)))
	if res.Expired+res2.Expired != 15 || res2.More {
		t.Fatalf("remaining batches: expired %d+%d more %v; want 15 in all, no more", res.Expired, res2.Expired, res2.More)
	}
	if n := s.StoredRecords(); n != 1 {
		t.Fatalf("StoredRecords = %d; want 1 (the late one)", n)
	}
	if _, _, err := s.Get("ns", "late"); err != nil {
		t.Fatalf("the unexpired record: %v", err)
	}
	checkIndex(t, s)
}

func TestExpireSameOnReplicasAndThroughSnapshot(t *testing.T) {
	a, b, c := openStore(t, vfs.NewMem()), openStore(t, vfs.NewMem()), openStore(t, vfs.NewMem())
	l := newLog()
	const base = int64(1_000_000)
	var ents []raftpb.Entry
	for i := 0; i < 40; i++ {
		ents = append(ents, l.cmd(base+int64(i), cmdClaim(fmt.Sprintf("k%d", i), 10, int64(50+i%7))))
	}
	// Replica a applies in one batch, b one entry at a time.
	mustApply(t, a, ents, nil)
	for _, e := range ents {
		mustApply(t, b, []raftpb.Entry{e}, nil)
	}
	// c restores a snapshot of a, then all three apply the same sweeps.
	if err := transferSnapshot(t, a, c); err != nil {
		t.Fatal(err)
	}
	sweeps := []raftpb.Entry{l.cmd(base+80, cmdExpire(base+80, 7)), l.cmd(base+90, cmdExpire(base+90, 7)), l.cmd(base+200, cmdExpire(base+200, 100))}
	for _, s := range []*Store{a, b, c} {
		for _, e := range sweeps {
			mustApply(t, s, []raftpb.Entry{e}, nil)
		}
		checkIndex(t, s)
	}
	sa, _ := a.Checksum()
	sb, _ := b.Checksum()
	sc, _ := c.Checksum()
	if sa != sb || sa != sc {
		t.Fatal("replicas that applied the same log differ after expiry")
	}
	if n := a.StoredRecords(); n != 0 {
		t.Fatalf("StoredRecords after the last sweep = %d; want 0", n)
	}
}

// TestExpiryIndexThroughCompactions drives a few keys through many lives
// (claims, heartbeats, completions, releases, takeovers, sweeps, with
// expiry times that repeat) and flushes and compacts Pebble in between.
// An index entry that moves is removed with a SingleDelete, which is
// correct only while no entry is ever set twice without a delete between:
// a second Set would come back once a compaction pairs the SingleDelete
// with the newer one, and checkIndex would find an entry without its
// record.
func TestExpiryIndexThroughCompactions(t *testing.T) {
	for seed := range int64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(seed), 7))
			s := openStore(t, vfs.NewMem())
			l := newLog()
			at := int64(1_000_000)
			keys := []string{"a", "b", "c", "d"}
			pick := func(xs ...int64) int64 { return xs[rng.IntN(len(xs))] }
			for step := range 1500 {
				at += int64(rng.IntN(3))
				key := keys[rng.IntN(len(keys))]
				token := uint64(0)
				if rec, _, err := s.Get("ns", key); err == nil && rec != nil {
					token = rec.Token
				}
				var cmd *statev1.Command
				switch r := rng.IntN(10); {
				case r < 3:
					cmd = cmdClaim(key, pick(2, 5), pick(3, 6, 10))
				case r < 5:
					cmd = cmdComplete(key, token, pick(3, 6, 10))
				case r < 6:
					cmd = &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{Namespace: "ns", Key: key, Token: token, Lease: pick(2, 5)}}}
				case r < 7:
					cmd = &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "ns", Key: key, Token: token}}}
				case r < 8:
					cmd = cmdExpire(at, uint32(1+rng.IntN(3)))
				default:
					cmd = nil // a tick
				}
				apply1(t, s, l.cmd(at, cmd))
				switch rng.IntN(20) {
				case 0:
					if err := s.db.Flush(); err != nil {
						t.Fatal(err)
					}
				case 1:
					if err := s.db.Flush(); err != nil {
						t.Fatal(err)
					}
					if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
						t.Fatal(err)
					}
				}
				if step%50 == 0 {
					checkIndex(t, s)
				}
			}
			if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
				t.Fatal(err)
			}
			checkIndex(t, s)
		})
	}
}

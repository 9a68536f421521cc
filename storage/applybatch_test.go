package storage

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// backlog is n log entries of churn, as a node catching up replays them:
// claims of fresh keys, each completed a few entries later (2 s of
// retention), log time advancing 1 ms an entry, and an Expire every
// sweepEvery entries once records fall due, as the leader's sweeper
// proposes them.
func backlog(n, sweepEvery int) []raftpb.Entry {
	const (
		step      = int64(time.Millisecond)
		retention = int64(2 * time.Second)
	)
	l := newLog()
	at := int64(1_000_000_000)
	ents := make([]raftpb.Entry, 0, n)
	type claimed struct {
		key   string
		token uint64
	}
	var open []claimed
	for i := 0; len(ents) < n; i++ {
		at += step
		switch {
		case i%sweepEvery == sweepEvery-1:
			ents = append(ents, l.cmd(at, cmdExpire(at, DefaultExpireLimit)))
		case len(open) > 4 || (len(open) > 0 && i%2 == 1):
			c := open[0]
			open = open[1:]
			ents = append(ents, l.cmd(at, cmdComplete(c.key, c.token, retention)))
		default:
			c := claimed{key: fmt.Sprintf("key-%07d", i), token: l.next}
			open = append(open, c)
			ents = append(ents, l.cmd(at, cmdClaim(c.key, int64(500*time.Millisecond), retention)))
		}
	}
	return ents
}

// readies splits ents as raft hands committed entries to the driver: up to
// 1 MiB of them per Ready (MaxCommittedSizePerReady = MaxSizePerMsg).
func readies(ents []raftpb.Entry) [][]raftpb.Entry {
	const max = 1 << 20
	var out [][]raftpb.Entry
	start, size := 0, 0
	for i := range ents {
		sz := ents[i].Size()
		if i > start && size+sz > max {
			out = append(out, ents[start:i])
			start, size = i, 0
		}
		size += sz
	}
	return append(out, ents[start:])
}

// backlogStore opens a store on an in-memory filesystem, with ents in its
// log and its key filter built, as a node that restarts and replays them.
func backlogStore(tb testing.TB, ents []raftpb.Entry) *Store {
	tb.Helper()
	s, err := Open(Config{Dir: "db", FS: vfs.NewMem()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	if err := s.Append(raftpb.HardState{}, ents, true); err != nil {
		tb.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		s.applyMu.Lock()
		built := s.filter.Load() != nil && s.nextFilter.Load() == nil
		s.applyMu.Unlock()
		if built {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatal("no record key filter after 10s")
		}
	}
	return s
}

// applyBacklog applies ents to s, one Apply per Ready, and returns the
// bytes the process allocated meanwhile.
func applyBacklog(tb testing.TB, s *Store, ents []raftpb.Entry) (allocated uint64) {
	tb.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, r := range readies(ents) {
		if _, err := s.Apply(r, nil); err != nil {
			tb.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// BenchmarkApplyBacklogWithSweeps applies 10,000 entries of churn with a
// sweep every 40 entries, one Apply per Ready, as a node catching up does.
func BenchmarkApplyBacklogWithSweeps(b *testing.B) {
	for _, n := range []int{5_000, 10_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ents := backlog(n, 40)
			for b.Loop() {
				b.StopTimer()
				s := backlogStore(b, ents)
				b.StartTimer()
				applyBacklog(b, s, ents)
				b.StopTimer()
				_ = s.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
		})
	}
}

// TestApplyBacklogWithSweepsIsLinear fails if applying a backlog with
// sweeps in it costs more than linear work: twice the entries must not
// allocate much more than twice the bytes. (Allocation is the measure, not
// time, so that the test does not depend on the machine's load. Pebble
// re-fragmented every range deletion of an indexed batch at each Get, in a
// new slice: an apply batch holding a sweep's range deletions cost entries
// × sweeps.)
func TestApplyBacklogWithSweepsIsLinear(t *testing.T) {
	perEntry := func(n int) float64 {
		ents := backlog(n, 40)
		s := backlogStore(t, ents)
		return float64(applyBacklog(t, s, ents)) / float64(n)
	}
	small, large := perEntry(4_000), perEntry(8_000)
	t.Logf("allocated per entry: %.0f B at 4,000 entries, %.0f B at 8,000", small, large)
	if large > 1.5*small {
		t.Errorf("applying 8,000 entries allocated %.0f B an entry, 4,000 entries %.0f B: apply cost grows faster than the backlog", large, small)
	}
}

// TestSweepsDoNotDependOnBatching drives a few keys through many lives
// (claims, completions, heartbeats, releases, takeovers, and sweeps with
// small limits and cut-offs that go back and forth), applied one entry at a
// time and then in random batches: every batching must give the same
// results and the same state. Within a batch, a sweep scans the database
// together with what the batch wrote so far (applyBatch's index overlay):
// entries set, moved, swept and set again before it, in the same batch.
func TestSweepsDoNotDependOnBatching(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			ref := openStore(t, vfs.NewMem())
			l := newLog()
			at := int64(1_000_000)
			keys := []string{"a", "b", "c", "d", "e", "f"}
			tokens := map[string]uint64{}
			pick := func(xs ...int64) int64 { return xs[rng.IntN(len(xs))] }
			var (
				ents []raftpb.Entry
				want []*statev1.Result
			)
			for range 1200 {
				at += int64(rng.IntN(3))
				key := keys[rng.IntN(len(keys))]
				var cmd *statev1.Command
				switch r := rng.IntN(12); {
				case r < 4:
					cmd = cmdClaim(key, pick(1, 2, 5), pick(2, 3, 6, 10))
				case r < 6:
					cmd = cmdComplete(key, tokens[key], pick(1, 3, 6, 10))
				case r < 7:
					cmd = &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{Namespace: "ns", Key: key, Token: tokens[key], Lease: pick(2, 5)}}}
				case r < 8:
					cmd = &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "ns", Key: key, Token: tokens[key]}}}
				case r < 11:
					cmd = cmdExpire(at-pick(0, 0, 2, 5, 8), uint32(1+rng.IntN(3)))
				default:
					cmd = nil // a tick
				}
				e := l.cmd(at, cmd)
				res := apply1(t, ref, e)
				if rec := res.GetRecord(); rec != nil && res.Outcome == statev1.Outcome_OUTCOME_ACQUIRED {
					tokens[key] = rec.Token
				}
				ents, want = append(ents, e), append(want, res)
			}
			checkIndex(t, ref)
			wantSum, err := ref.Checksum()
			if err != nil {
				t.Fatal(err)
			}
			for round := range 4 {
				s := openStore(t, vfs.NewMem())
				var got []*statev1.Result
				for rest := ents; len(rest) > 0; {
					n := min(len(rest), 1+rng.IntN([]int{5, 40, 200, 1200}[round]))
					got = append(got, mustApply(t, s, rest[:n], nil)...)
					rest = rest[n:]
				}
				for i := range want {
					if !proto.Equal(got[i], want[i]) {
						t.Fatalf("round %d: entry %d (%v): result %v; applied alone %v", round, ents[i].Index, decodeEntryCommand(t, ents[i]), got[i], want[i])
					}
				}
				checkIndex(t, s)
				if sum, err := s.Checksum(); err != nil || sum != wantSum {
					t.Fatalf("round %d: checksum %x, %v; applied one entry at a time %x", round, sum, err, wantSum)
				}
			}
		})
	}
}

func decodeEntryCommand(t *testing.T, e raftpb.Entry) *statev1.Command {
	t.Helper()
	var env statev1.Entry
	if err := proto.Unmarshal(e.Data, &env); err != nil {
		t.Fatal(err)
	}
	return decodeCommand(env.Command)
}

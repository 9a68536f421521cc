package raftnode

import (
	"fmt"
	"github.com/keystore-dev/keystore/entry"
	"sync"
	"testing"
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"google.golang.org/protobuf/proto"
)

// recordingRaft stands in for raft in packer tests: it records the entries
// proposed, taking delay to accept each, or refuses with err.
type recordingRaft struct {
	raftCore
	delay time.Duration
	err   error

	mu      sync.Mutex
	entries []*statev1.Entry
}

func (r *recordingRaft) Pump() {}

func (r *recordingRaft) Propose(data ...[]byte) error {
	time.Sleep(r.delay)
	if r.err != nil {
		return r.err
	}
	var es []*statev1.Entry
	for _, d := range data {
		e := &statev1.Entry{}
		if err := proto.Unmarshal(d, e); err != nil {
			return err
		}
		es = append(es, e)
	}
	r.mu.Lock()
	r.entries = append(r.entries, es...)
	r.mu.Unlock()
	return nil
}

// proposals returns the request ids of e's proposals and their commands.
func proposals(e *statev1.Entry) (ids []uint64, cmds [][]byte) {
	if len(e.GetProposals()) == 0 {
		return []uint64{e.GetRequestId()}, [][]byte{e.GetCommand()}
	}
	for _, p := range e.GetProposals() {
		ids = append(ids, p.GetRequestId())
		cmds = append(cmds, p.GetCommand())
	}
	return ids, cmds
}

func packerNode(rn raftCore) *Node {
	cfg := Config{}.withDefaults()
	return &Node{cfg: cfg, rn: rn, clock: newLogClock(cfg.Now, time.Now, 0), stopc: make(chan struct{})}
}

func pend(id uint64, key string, size int) *pending {
	return &pending{Proposal: entry.Proposal{RequestID: id, Key: key, Command: make([]byte, size)}, ch: make(chan outcome, 1)}
}

// TestProposePackedCuts: entries keep the queue's order, never hold one
// record twice nor two claims, and respect the count and size bounds; a
// proposal without a key travels alone.
func TestProposePackedCuts(t *testing.T) {
	rr := &recordingRaft{}
	n := packerNode(rr)
	claim := func(p *pending) *pending { p.Grants = true; return p }
	q := []*pending{
		pend(1, "a", 10), pend(2, "b", 10), pend(3, "a", 10), // a twice: cut before 3
		pend(4, "", 10),                    // alone
		pend(5, "c", 10), pend(6, "d", 10), // together
		pend(7, "e", n.cfg.MaxPackBytes-15), pend(8, "f", 10), // 7 and 8 exceed the size bound with 5, 6
		claim(pend(9, "g", 1)), pend(10, "h", 1), claim(pend(11, "i", 1)), // two claims: cut before 11
	}
	n.proposePacked(q)
	var got [][]uint64
	for _, e := range rr.entries {
		ids, _ := proposals(e)
		got = append(got, ids)
		if e.GetTime() == 0 {
			t.Errorf("entry %v: no time stamp", ids)
		}
	}
	want := [][]uint64{{1, 2}, {3}, {4}, {5, 6}, {7, 8, 9, 10}, {11}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("entries %v; want %v", got, want)
	}
	if e := rr.entries[1]; e.GetRequestId() != 3 || len(e.GetProposals()) != 0 {
		t.Errorf("a lone proposal: %v; want the single-proposal form", e)
	}

	rr.entries = nil
	q = q[:0]
	for i := range n.cfg.MaxPackProposals + 1 {
		q = append(q, pend(uint64(i+1), fmt.Sprint(i), 1))
	}
	n.proposePacked(q)
	if len(rr.entries) != 2 || len(rr.entries[0].GetProposals()) != n.cfg.MaxPackProposals {
		t.Errorf("%d proposals on distinct keys: %d entries; want 2, the first full", len(q), len(rr.entries))
	}
}

// TestSubmitConcurrent: proposers arriving while one proposes are packed by
// it, each is proposed exactly once, and no entry names a record twice or
// holds two claims.
func TestSubmitConcurrent(t *testing.T) {
	rr := &recordingRaft{delay: 200 * time.Microsecond}
	n := packerNode(rr)
	const workers, each = 16, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := uint64(w*each + i + 1)
				// Few keys, so that collisions are common; every third a
				// claim (its command starts with "c").
				key, grants := fmt.Sprint(id%7), id%3 == 0
				cmd := []byte("x" + key)
				if grants {
					cmd[0] = 'c'
				}
				n.submit(&pending{Proposal: entry.Proposal{RequestID: id, Key: key, Grants: grants, Command: cmd}, ch: make(chan outcome, 1)})
			}
		}()
	}
	wg.Wait()
	// The last submitter may have handed the queue to a goroutine.
	deadline := time.Now().Add(5 * time.Second)
	for {
		n.pack.mu.Lock()
		busy := n.pack.busy
		n.pack.mu.Unlock()
		if !busy || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	seen := map[uint64]bool{}
	packed := 0
	for _, e := range rr.entries {
		ids, cmds := proposals(e)
		keys := map[string]bool{}
		claims := 0
		for i, id := range ids {
			if seen[id] {
				t.Errorf("request %d proposed twice", id)
			}
			seen[id] = true
			if keys[string(cmds[i][1:])] {
				t.Errorf("entry %v names record %s twice", ids, cmds[i][1:])
			}
			keys[string(cmds[i][1:])] = true
			if cmds[i][0] == 'c' {
				claims++
			}
		}
		if claims > 1 {
			t.Errorf("entry %v holds %d claims; want at most one", ids, claims)
		}
		if len(ids) > 1 {
			packed++
		}
	}
	if len(seen) != workers*each {
		t.Errorf("%d requests proposed; want %d", len(seen), workers*each)
	}
	if packed == 0 {
		t.Errorf("no entry packed more than one proposal (%d entries)", len(rr.entries))
	}
}

// TestProposeEntryFailure: a proposal raft drops is reported to each of its
// proposers as retryable; a stopped raft as stopped; an overloaded leader
// as overloaded.
func TestProposeEntryFailure(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{{raft.ErrProposalDropped, errRetry}, {raft.ErrStopped, ErrStopped}, {ErrOverloaded, ErrOverloaded}} {
		n := packerNode(&recordingRaft{err: tc.err})
		a, b := pend(1, "a", 1), pend(2, "b", 1)
		n.proposePacked([]*pending{a, b})
		for _, p := range []*pending{a, b} {
			select {
			case o := <-p.ch:
				if o.err != tc.want {
					t.Errorf("raft error %v: proposer %d heard %v; want %v", tc.err, p.RequestID, o.err, tc.want)
				}
			default:
				t.Errorf("raft error %v: proposer %d heard nothing", tc.err, p.RequestID)
			}
		}
	}
}

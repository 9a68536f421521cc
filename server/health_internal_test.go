package server

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/raftnode"
)

func TestUnfit(t *testing.T) {
	ok := raftnode.Status{ID: 1, Leader: 2, Commit: 5000, Applied: 4990, Healthy: true}
	for _, tc := range []struct {
		name string
		edit func(*raftnode.Status)
		want string
	}{
		{"caught up by its own view", func(*raftnode.Status) {}, ""},
		{"lag within maxServingLag", func(st *raftnode.Status) { st.Applied = st.Commit - maxServingLag }, ""},
		{"lag past maxServingLag", func(st *raftnode.Status) { st.Applied = st.Commit - maxServingLag - 1 }, "applying"},
		{"no leader", func(st *raftnode.Status) { st.Leader = 0 }, "no leader"},
		{"storage failure", func(st *raftnode.Status) { st.Healthy = false }, "storage failure"},
	} {
		st := ok
		tc.edit(&st)
		if got := unfit(st); got != tc.want {
			t.Errorf("%s: unfit(%+v) = %q; want %q", tc.name, st, got, tc.want)
		}
	}
}

// fakeHealthNode is a healthNode whose Status and ReadIndex the test sets.
type fakeHealthNode struct {
	mu     sync.Mutex
	st     raftnode.Status
	answer func(ctx context.Context) error // nil: rounds return at once
	rounds []time.Time                     // when each round began
}

func (f *fakeHealthNode) Status() raftnode.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *fakeHealthNode) ReadIndex(ctx context.Context) error {
	f.mu.Lock()
	f.rounds = append(f.rounds, time.Now())
	answer := f.answer
	f.mu.Unlock()
	if answer == nil {
		return nil
	}
	return answer(ctx)
}

func (f *fakeHealthNode) set(edit func(f *fakeHealthNode)) {
	f.mu.Lock()
	edit(f)
	f.mu.Unlock()
}

func (f *fakeHealthNode) roundCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.rounds)
}

// noAnswer is a ReadIndex that does not return before its context ends: no
// quorum, or a node that cannot apply up to the read index in time.
func noAnswer(ctx context.Context) error {
	<-ctx.Done()
	return raftnode.ErrTimeout
}

type healthChange struct {
	ok  bool
	why string
	at  time.Time
}

var testHealthTimings = healthTimings{
	poll:        2 * time.Millisecond,
	probeEvery:  40 * time.Millisecond,
	joinTimeout: 20 * time.Millisecond,
	stayTimeout: 30 * time.Millisecond,
}

// runHealth runs watchHealth over node until the test ends and returns its
// reports.
func runHealth(t *testing.T, node *fakeHealthNode) <-chan healthChange {
	t.Helper()
	changes := make(chan healthChange, 100)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		watchHealth(stop, node, testHealthTimings, func(ok bool, _ raftnode.Status, why string) {
			changes <- healthChange{ok, why, time.Now()}
		})
	}()
	t.Cleanup(func() {
		close(stop)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("watchHealth did not return after stop")
		}
	})
	return changes
}

func nextChange(t *testing.T, changes <-chan healthChange) healthChange {
	t.Helper()
	select {
	case c := <-changes:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no health change within 5s")
		return healthChange{}
	}
}

func noChange(t *testing.T, changes <-chan healthChange, d time.Duration) {
	t.Helper()
	select {
	case c := <-changes:
		t.Fatalf("got health change %+v; want none", c)
	case <-time.After(d):
	}
}

// The defect's view: a leader is known and the node applied all it knows to
// be committed, but it cannot catch up with the leader's commit index. It
// must not serve until a ReadIndex round returns.
func TestWatchHealthNeedsReadIndexToServe(t *testing.T) {
	node := &fakeHealthNode{st: raftnode.Status{Leader: 2, Commit: 622, Applied: 622, Healthy: true}, answer: noAnswer}
	changes := runHealth(t, node)
	noChange(t, changes, 300*time.Millisecond)
	if n := node.roundCount(); n < 2 {
		t.Fatalf("%d ReadIndex rounds in 300ms; want a new one every %s", n, testHealthTimings.probeEvery)
	}
	node.set(func(f *fakeHealthNode) { f.answer = nil })
	if c := nextChange(t, changes); !c.ok {
		t.Fatalf("after a round returned: got %+v; want SERVING", c)
	}
}

// A serving node whose round does not return in time stops serving, and
// serves again once one does.
func TestWatchHealthStopsServingWhenRoundFails(t *testing.T) {
	node := &fakeHealthNode{st: raftnode.Status{Leader: 2, Commit: 10, Applied: 10, Healthy: true}}
	changes := runHealth(t, node)
	if c := nextChange(t, changes); !c.ok {
		t.Fatalf("got %+v; want SERVING", c)
	}
	node.set(func(f *fakeHealthNode) { f.answer = noAnswer })
	if c := nextChange(t, changes); c.ok || !strings.Contains(c.why, "not caught up") {
		t.Fatalf("after rounds stopped returning: got %+v; want NOT_SERVING, not caught up", c)
	}
	node.set(func(f *fakeHealthNode) { f.answer = nil })
	if c := nextChange(t, changes); !c.ok {
		t.Fatalf("after rounds returned again: got %+v; want SERVING", c)
	}
}

// The node's own view rules serving out at once, without waiting for a
// round; and a round begun before the node became unfit does not make it
// serve afterwards.
func TestWatchHealthUnfitAtOnce(t *testing.T) {
	node := &fakeHealthNode{st: raftnode.Status{Leader: 2, Commit: 10, Applied: 10, Healthy: true}}
	changes := runHealth(t, node)
	if c := nextChange(t, changes); !c.ok {
		t.Fatalf("got %+v; want SERVING", c)
	}

	// A round under way while the leader is lost and found again.
	release := make(chan struct{})
	node.set(func(f *fakeHealthNode) {
		f.answer = func(ctx context.Context) error {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return raftnode.ErrTimeout
			}
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for n := node.roundCount(); node.roundCount() == n; {
		if time.Now().After(deadline) {
			t.Fatal("no new round within 5s")
		}
		time.Sleep(time.Millisecond)
	}
	node.set(func(f *fakeHealthNode) { f.st.Leader = 0 })
	if c := nextChange(t, changes); c.ok || c.why != "no leader" {
		t.Fatalf("after the leader was lost: got %+v; want NOT_SERVING, no leader", c)
	}
	node.set(func(f *fakeHealthNode) { f.st.Leader = 3 })
	time.Sleep(5 * testHealthTimings.poll)
	before := node.roundCount()
	close(release) // the old round returns: that proves nothing now
	c := nextChange(t, changes)
	if !c.ok {
		t.Fatalf("with a leader again: got %+v; want SERVING", c)
	}
	node.mu.Lock()
	rounds := append([]time.Time(nil), node.rounds...)
	node.mu.Unlock()
	if len(rounds) <= before || c.at.Before(rounds[before]) {
		t.Fatalf("SERVING again at %v, on the round begun before the leader was lost; want a new round first (rounds %v)", c.at, rounds)
	}

	node.set(func(f *fakeHealthNode) { f.st.Healthy = false })
	if c := nextChange(t, changes); c.ok || c.why != "storage failure" {
		t.Fatalf("after a storage failure: got %+v; want NOT_SERVING, storage failure", c)
	}
	noChange(t, changes, 200*time.Millisecond)
}

// Health checks stay cheap: at most one round per probeEvery.
func TestWatchHealthRoundRate(t *testing.T) {
	node := &fakeHealthNode{st: raftnode.Status{Leader: 2, Commit: 10, Applied: 10, Healthy: true}}
	runHealth(t, node)
	const window = 400 * time.Millisecond
	time.Sleep(window)
	if n, max := node.roundCount(), int(window/testHealthTimings.probeEvery)+1; n > max {
		t.Fatalf("%d ReadIndex rounds in %s; want at most %d", n, window, max)
	}
}

package expiry

import (
	"context"
	"sync"
	"testing"
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// fakeLog is an index of expiry times and a log that applies Expire
// commands to it, with a leader switch.
type fakeLog struct {
	mu      sync.Mutex
	leader  bool
	now     int64
	due     []int64 // sorted expiry times
	expires []*statev1.Expire
}

func (f *fakeLog) IsLeader() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.leader }
func (f *fakeLog) LogNow() int64  { f.mu.Lock(); defer f.mu.Unlock(); return f.now }

func (f *fakeLog) NextExpiry() (int64, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.due) == 0 {
		return 0, false, nil
	}
	return f.due[0], true, nil
}

func (f *fakeLog) Propose(_ context.Context, _ uint64, b []byte) (*statev1.Result, error) {
	cmd := &statev1.Command{}
	if err := proto.Unmarshal(b, cmd); err != nil {
		return nil, err
	}
	e := cmd.GetExpire()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expires = append(f.expires, e)
	n := 0
	for n < len(f.due) && n < int(e.Limit) && f.due[n] <= min(e.UpTo, f.now) {
		n++
	}
	f.due = f.due[n:]
	more := len(f.due) > 0 && f.due[0] <= min(e.UpTo, f.now)
	return &statev1.Result{Expired: uint32(n), More: more}, nil
}

func (f *fakeLog) state() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.due), len(f.expires)
}

func startSweeper(t *testing.T, f *fakeLog, batch uint32) *Sweeper {
	t.Helper()
	s, err := New(Config{Interval: 20 * time.Millisecond, BatchSize: batch}, f, f)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSweeperDrainsDueRecordsInBatches(t *testing.T) {
	f := &fakeLog{leader: true, now: 1000}
	for i := int64(0); i < 25; i++ {
		f.due = append(f.due, 100+i)
	}
	f.due = append(f.due, 5000) // not due yet
	s := startSweeper(t, f, 10)
	waitFor(t, "the due records to go", func() bool { left, _ := f.state(); return left == 1 })
	_, entries := f.state()
	if entries != 3 {
		t.Fatalf("proposed %d Expire entries for 25 due records at 10 a batch; want 3", entries)
	}
	if expired, _ := s.Stats(); expired != 25 {
		t.Fatalf("Stats expired = %d; want 25", expired)
	}
	for _, e := range f.expires {
		if e.UpTo != 1000 || e.Limit != 10 {
			t.Fatalf("Expire{up_to %d, limit %d}; want up_to = log time 1000, limit 10", e.UpTo, e.Limit)
		}
	}
}

func TestSweeperProposesOnlyOnTheLeaderAndOnlyWhenDue(t *testing.T) {
	f := &fakeLog{leader: false, now: 1000, due: []int64{500}}
	startSweeper(t, f, 10)
	time.Sleep(100 * time.Millisecond)
	if _, entries := f.state(); entries != 0 {
		t.Fatalf("a follower proposed %d Expire entries; want 0", entries)
	}
	f.mu.Lock()
	f.leader, f.due = true, []int64{2000}
	f.mu.Unlock()
	time.Sleep(100 * time.Millisecond)
	if _, entries := f.state(); entries != 0 {
		t.Fatalf("proposed %d Expire entries before anything was due; want 0", entries)
	}
	f.mu.Lock()
	f.now = 2000
	f.mu.Unlock()
	waitFor(t, "the record due at 2000", func() bool { left, _ := f.state(); return left == 0 })
}

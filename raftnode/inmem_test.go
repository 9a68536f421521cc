package raftnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// fakeLocal is a Local that records what its transport hands it.
type fakeLocal struct {
	// gate, when set, holds every Step until it is closed; entered hears
	// of each Step that started.
	gate    chan struct{}
	entered chan struct{}
	// snapMD and snapData are the state OpenSnapshot opens; receiveErr
	// fails ReceiveSnapshot after it read the stream.
	snapMD     raftpb.SnapshotMetadata
	snapData   []byte
	receiveErr error
	// propose answers ProposeForwarded.
	propose func(ctx context.Context, reqID uint64, cmd []byte) (*statev1.Result, uint64, error)

	mu          sync.Mutex
	msgs        []raftpb.Message
	frames      int
	unreachable map[uint64]int
	snapReports []raft.SnapshotStatus
	snapMsgs    []raftpb.Message
	snapGot     [][]byte
}

func (l *fakeLocal) Step(msgs []raftpb.Message) error {
	if l.entered != nil {
		l.entered <- struct{}{}
	}
	if l.gate != nil {
		<-l.gate
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, msgs...)
	l.frames++
	return nil
}

func (l *fakeLocal) ReportUnreachable(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unreachable == nil {
		l.unreachable = make(map[uint64]int)
	}
	l.unreachable[id]++
}

func (l *fakeLocal) ReportSnapshot(_ uint64, st raft.SnapshotStatus) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.snapReports = append(l.snapReports, st)
}

func (l *fakeLocal) ProposeForwarded(ctx context.Context, reqID uint64, cmd []byte) (*statev1.Result, uint64, error) {
	if l.propose == nil {
		return nil, 0, errNotLeader
	}
	return l.propose(ctx, reqID, cmd)
}

func (l *fakeLocal) ProposeConfChangeForwarded(context.Context, []byte) (uint64, error) {
	return 0, errNotLeader
}

func (l *fakeLocal) Hello(uint64) HelloInfo { return HelloInfo{} }

func (l *fakeLocal) OpenSnapshot() (raftpb.SnapshotMetadata, io.ReadCloser, error) {
	return l.snapMD, io.NopCloser(bytes.NewReader(l.snapData)), nil
}

func (l *fakeLocal) ReceiveSnapshot(m raftpb.Message, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if l.receiveErr != nil {
		return l.receiveErr
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.snapMsgs = append(l.snapMsgs, m)
	l.snapGot = append(l.snapGot, b)
	return nil
}

func (l *fakeLocal) received() []raftpb.Message {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.msgs)
}

func (l *fakeLocal) unreachableCount(id uint64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unreachable[id]
}

func (l *fakeLocal) reports() []raft.SnapshotStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.snapReports)
}

// inmemNodes starts a transport for each id on nw with a fakeLocal (made
// by mk, if set); they stop when the test ends.
func inmemNodes(t *testing.T, nw *InmemNetwork, mk func(id uint64) *fakeLocal, ids ...uint64) (map[uint64]Transport, map[uint64]*fakeLocal) {
	t.Helper()
	ts := make(map[uint64]Transport)
	ls := make(map[uint64]*fakeLocal)
	for _, id := range ids {
		l := &fakeLocal{}
		if mk != nil {
			l = mk(id)
		}
		tr := nw.Transport(id)
		if err := tr.Start(l); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.Stop)
		ts[id], ls[id] = tr, l
	}
	return ts, ls
}

// app is an append from from to to at index, carrying one entry.
func app(from, to, index uint64) raftpb.Message {
	return raftpb.Message{Type: raftpb.MsgApp, From: from, To: to, Term: 1, Index: index,
		Entries: []raftpb.Entry{{Term: 1, Index: index + 1, Data: []byte(fmt.Sprint(index))}}}
}

func indexes(msgs []raftpb.Message) []uint64 {
	var out []uint64
	for _, m := range msgs {
		out = append(out, m.Index)
	}
	return out
}

// TestInmemDeliversInOrder: messages arrive in the order sent, in frames of
// whatever queued meanwhile, as copies the sender may reuse at once.
func TestInmemDeliversInOrder(t *testing.T) {
	nw := NewInmemNetwork(1)
	ts, ls := inmemNodes(t, nw, nil, 1, 2)
	const total = 1000
	var want []uint64
	for i := uint64(0); i < total; {
		batch := []raftpb.Message{app(1, 2, i)}
		if i%3 == 0 {
			batch = append(batch, app(1, 2, i+1), app(1, 1, 0)) // to itself: not sent
			i++
		}
		for _, m := range batch {
			if m.To == 2 {
				want = append(want, m.Index)
			}
		}
		ts[1].Send(batch)
		batch[0].Entries[0].Data[0] = 'x' // raft's memory, not the receiver's
		i++
	}
	waitFor(t, "every message", func() bool { return len(ls[2].received()) == len(want) })
	got := ls[2].received()
	if !slices.Equal(indexes(got), want) {
		t.Fatalf("got indexes %v...; want %v...", indexes(got)[:10], want[:10])
	}
	for _, m := range got {
		if m.From != 1 || m.To != 2 || string(m.Entries[0].Data) != fmt.Sprint(m.Index) {
			t.Fatalf("got %v from %d to %d with data %q; want from 1 to 2 with data %q", m.Type, m.From, m.To, m.Entries[0].Data, fmt.Sprint(m.Index))
		}
	}
	if n := len(ls[1].received()); n != 0 {
		t.Errorf("node 1 received %d messages addressed to itself; want 0", n)
	}
	if n := ls[1].unreachableCount(2); n != 0 {
		t.Errorf("node 1 heard node 2 unreachable %d times; want 0", n)
	}
}

// TestInmemReachability: each fault control cuts exactly the links it
// names; a message on a cut link (or to an unknown node) is lost and the
// sender's raft hears that its peer is unreachable.
func TestInmemReachability(t *testing.T) {
	all := []uint64{1, 2, 3, 4}
	type link struct{ from, to uint64 }
	both := func(a, b uint64) []link { return []link{{a, b}, {b, a}} }
	tests := []struct {
		name  string
		fault func(nw *InmemNetwork)
		cut   []link
	}{
		{"none", func(*InmemNetwork) {}, nil},
		{"disconnect", func(nw *InmemNetwork) { nw.Disconnect(1, 2) }, both(1, 2)},
		{"one way", func(nw *InmemNetwork) { nw.DisconnectOneWay(1, 2) }, []link{{1, 2}}},
		{"isolate", func(nw *InmemNetwork) { nw.Isolate(3) }, slices.Concat(both(3, 1), both(3, 2), both(3, 4))},
		{"partition", func(nw *InmemNetwork) { nw.Partition([]uint64{1, 2}, []uint64{3}) }, slices.Concat(both(1, 3), both(2, 3))},
		{"isolate then connect", func(nw *InmemNetwork) { nw.Isolate(3); nw.Connect(3, 1) }, slices.Concat(both(3, 2), both(3, 4))},
		{"isolate then one way", func(nw *InmemNetwork) { nw.Isolate(3); nw.ConnectOneWay(3, 1) }, slices.Concat([]link{{1, 3}}, both(3, 2), both(3, 4))},
		{"heal", func(nw *InmemNetwork) {
			nw.Partition([]uint64{1}, []uint64{2, 3, 4})
			nw.DisconnectOneWay(4, 3)
			nw.Heal()
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nw := NewInmemNetwork(1)
			ts, ls := inmemNodes(t, nw, nil, all...)
			tt.fault(nw)
			for _, from := range all {
				var msgs []raftpb.Message
				for _, to := range all {
					msgs = append(msgs, app(from, to, from*10+to))
				}
				msgs = append(msgs, app(from, 9, 0)) // no such node
				ts[from].Send(msgs)
			}
			isCut := func(from, to uint64) bool { return slices.Contains(tt.cut, link{from, to}) }
			for _, from := range all {
				for _, to := range all {
					if from == to {
						continue
					}
					if isCut(from, to) {
						waitFor(t, fmt.Sprintf("%d hearing %d unreachable", from, to), func() bool { return ls[from].unreachableCount(to) > 0 })
						continue
					}
					waitFor(t, fmt.Sprintf("%d's message to %d", from, to), func() bool {
						return slices.ContainsFunc(ls[to].received(), func(m raftpb.Message) bool { return m.From == from })
					})
				}
				waitFor(t, fmt.Sprintf("%d hearing 9 unreachable", from), func() bool { return ls[from].unreachableCount(9) > 0 })
			}
			// Stop all: nothing in flight any more; then check no cut
			// link delivered and no open one was reported.
			for _, tr := range ts {
				tr.Stop()
			}
			for _, from := range all {
				for _, to := range all {
					if from == to {
						continue
					}
					got := slices.ContainsFunc(ls[to].received(), func(m raftpb.Message) bool { return m.From == from })
					if isCut(from, to) && got {
						t.Errorf("%d → %d is cut, yet a message went through", from, to)
					}
					if n := ls[from].unreachableCount(to); !isCut(from, to) && n > 0 {
						t.Errorf("%d → %d is up, yet %d heard it unreachable %d times", from, to, from, n)
					}
				}
			}
		})
	}
}

// TestInmemCutLosesMessagesInFlight: a link cut while messages wait out
// its delay loses them.
func TestInmemCutLosesMessagesInFlight(t *testing.T) {
	nw := NewInmemNetwork(1)
	nw.SetDelay(1, 2, 50*time.Millisecond)
	ts, ls := inmemNodes(t, nw, nil, 1, 2)
	ts[1].Send([]raftpb.Message{app(1, 2, 1), app(1, 2, 2)})
	nw.Disconnect(1, 2)
	waitFor(t, "an unreachable report", func() bool { return ls[1].unreachableCount(2) > 0 })
	if got := ls[2].received(); len(got) != 0 {
		t.Errorf("received %v over a link cut while they were in flight; want nothing", indexes(got))
	}
}

// TestInmemDrop: drop rate 1 loses everything and says so; a fractional
// rate loses some, the same ones for the same seed and sends.
func TestInmemDrop(t *testing.T) {
	nw := NewInmemNetwork(1)
	nw.SetDrop(1, 2, 1)
	ts, ls := inmemNodes(t, nw, nil, 1, 2, 3)
	for i := range uint64(100) {
		ts[1].Send([]raftpb.Message{app(1, 2, i), app(1, 3, i)})
	}
	waitFor(t, "every message to 3", func() bool { return len(ls[3].received()) == 100 })
	waitFor(t, "an unreachable report", func() bool { return ls[1].unreachableCount(2) > 0 })
	if got := ls[2].received(); len(got) != 0 {
		t.Errorf("drop rate 1 delivered %d messages; want 0", len(got))
	}
	if n := ls[1].unreachableCount(3); n != 0 {
		t.Errorf("a lossless link reported unreachable %d times; want 0", n)
	}

	run := func(seed uint64) []uint64 {
		nw := NewInmemNetwork(seed)
		nw.SetDrop(1, 2, 0.5)
		ts, ls := inmemNodes(t, nw, nil, 1, 2)
		for i := range uint64(200) {
			ts[1].Send([]raftpb.Message{app(1, 2, i)})
		}
		nw.SetDrop(1, 2, 0)
		ts[1].Send([]raftpb.Message{{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Index: 1000}}) // the end mark
		waitFor(t, "the end mark", func() bool {
			return slices.ContainsFunc(ls[2].received(), func(m raftpb.Message) bool { return m.Index == 1000 })
		})
		return indexes(ls[2].received())
	}
	a, b, c := run(7), run(7), run(8)
	if !slices.Equal(a, b) {
		t.Errorf("seed 7 delivered %v, then %v; want the same", a, b)
	}
	if slices.Equal(a, c) {
		t.Errorf("seeds 7 and 8 delivered the same %v; want different", a)
	}
	if n := len(a); n < 60 || n > 140 {
		t.Errorf("drop rate 0.5 delivered %d of 200; want about half", n)
	}
}

// TestInmemDelay: a delayed link delivers no earlier than its delay, and
// in order even when the delay shrinks meanwhile.
func TestInmemDelay(t *testing.T) {
	const delay = 40 * time.Millisecond
	nw := NewInmemNetwork(1)
	nw.SetDelay(1, 2, delay)
	ts, ls := inmemNodes(t, nw, nil, 1, 2, 3)
	start := time.Now()
	ts[1].Send([]raftpb.Message{app(1, 2, 1), app(1, 3, 1)})
	nw.SetDelay(1, 2, 0)
	ts[1].Send([]raftpb.Message{app(1, 2, 2)})
	waitFor(t, "the undelayed link", func() bool { return len(ls[3].received()) == 1 })
	if took := time.Since(start); took >= delay {
		t.Errorf("the undelayed link took %v; want less than %v", took, delay)
	}
	waitFor(t, "the delayed link", func() bool { return len(ls[2].received()) == 2 })
	if took := time.Since(start); took < delay {
		t.Errorf("the delayed link delivered after %v; want at least %v", took, delay)
	}
	if got := indexes(ls[2].received()); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("got %v; want [1 2]: a later message must not overtake", got)
	}
}

// TestInmemStopWaits: Stop waits for a delivery in progress, whichever end
// stops; after it nothing reaches the stopped node and what is sent to it
// is lost.
func TestInmemStopWaits(t *testing.T) {
	for _, stopping := range []uint64{1, 2} {
		t.Run(fmt.Sprintf("node %d stops", stopping), func(t *testing.T) {
			nw := NewInmemNetwork(1)
			gate, entered := make(chan struct{}), make(chan struct{}, 10)
			ts, ls := inmemNodes(t, nw, func(id uint64) *fakeLocal {
				if id == 2 {
					return &fakeLocal{gate: gate, entered: entered}
				}
				return &fakeLocal{}
			}, 1, 2)
			ts[1].Send([]raftpb.Message{app(1, 2, 1)})
			<-entered // a delivery is in node 2's Step
			stopped := make(chan struct{})
			go func() {
				ts[stopping].Stop()
				close(stopped)
			}()
			select {
			case <-stopped:
				t.Fatal("Stop returned while a delivery was in progress")
			case <-time.After(20 * time.Millisecond):
			}
			close(gate)
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				t.Fatal("Stop has not returned 5s after the delivery ended")
			}
			ts[1].Send([]raftpb.Message{app(1, 2, 2)})
			if stopping == 2 {
				waitFor(t, "node 2 unreachable", func() bool { return ls[1].unreachableCount(2) > 0 })
			}
			ts[2].Stop()
			ts[1].Stop()
			if got := indexes(ls[2].received()); !slices.Equal(got, []uint64{1}) {
				t.Errorf("node 2 received %v; want [1] only", got)
			}
		})
	}
}

// TestInmemSnapshot: a MsgSnap streams the sender's current state beside
// the queue; the receiver gets the metadata of what was sent, and the
// sender's raft hears SnapshotFinish, or SnapshotFailure when the link is
// cut, the receiver fails, or the state is older than raft asked for.
func TestInmemSnapshot(t *testing.T) {
	md := raftpb.SnapshotMetadata{Index: 7, Term: 2, ConfState: raftpb.ConfState{Voters: []uint64{1, 2}}}
	data := bytes.Repeat([]byte("snapshot"), 20_000) // several pipe writes
	tests := []struct {
		name       string
		asked      uint64
		cut        bool
		receiveErr error
		want       raft.SnapshotStatus
	}{
		{"sent", 5, false, nil, raft.SnapshotFinish},
		{"link cut", 5, true, nil, raft.SnapshotFailure},
		{"receiver fails", 5, false, errors.New("disk full"), raft.SnapshotFailure},
		{"state behind", 9, false, nil, raft.SnapshotFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nw := NewInmemNetwork(1)
			ts, ls := inmemNodes(t, nw, func(id uint64) *fakeLocal {
				return &fakeLocal{snapMD: md, snapData: data, receiveErr: tt.receiveErr}
			}, 1, 2)
			if tt.cut {
				nw.Disconnect(1, 2)
			}
			ts[1].Send([]raftpb.Message{{Type: raftpb.MsgSnap, From: 1, To: 2, Term: 2,
				Snapshot: &raftpb.Snapshot{Data: []byte("marker"), Metadata: raftpb.SnapshotMetadata{Index: tt.asked, Term: 2}}}})
			waitFor(t, "a snapshot report", func() bool { return len(ls[1].reports()) > 0 })
			if got := ls[1].reports(); !slices.Equal(got, []raft.SnapshotStatus{tt.want}) {
				t.Fatalf("reports %v; want [%v]", got, tt.want)
			}
			ls[2].mu.Lock()
			defer ls[2].mu.Unlock()
			if tt.want == raft.SnapshotFailure {
				if len(ls[2].snapMsgs) != 0 {
					t.Errorf("the receiver accepted %d snapshots; want 0", len(ls[2].snapMsgs))
				}
				return
			}
			if len(ls[2].snapMsgs) != 1 {
				t.Fatalf("the receiver accepted %d snapshots; want 1", len(ls[2].snapMsgs))
			}
			m := ls[2].snapMsgs[0]
			if m.Snapshot.Metadata.Index != md.Index || m.Snapshot.Metadata.Term != md.Term || string(m.Snapshot.Data) != "marker" || m.From != 1 {
				t.Errorf("received %v from %d with metadata %v and data %q; want metadata %v and data %q from 1", m.Type, m.From, m.Snapshot.Metadata, m.Snapshot.Data, md, "marker")
			}
			if !bytes.Equal(ls[2].snapGot[0], data) {
				t.Errorf("received %d bytes of state; want the %d sent", len(ls[2].snapGot[0]), len(data))
			}
		})
	}
}

// TestInmemForward: a forwarded proposal reaches the target's Local over
// an open link and its errors come back as tcpTransport.Forward's do.
func TestInmemForward(t *testing.T) {
	errRetryable := errors.New("retryable")
	tests := []struct {
		name    string
		answer  error // the target's ProposeForwarded's error
		cut     bool
		back    bool          // only the way back is cut
		delay   time.Duration // on the way there
		timeout time.Duration
		want    error // nil, ErrTimeout, ErrOverloaded or errRetryable
	}{
		{name: "ok"},
		{name: "not leader", answer: errNotLeader, want: errRetryable},
		{name: "leadership changed", answer: errRetry, want: errRetryable},
		{name: "leader stopped", answer: ErrStopped, want: errRetryable},
		{name: "overloaded", answer: ErrOverloaded, want: ErrOverloaded},
		{name: "leader timed out", answer: ErrTimeout, want: errRetryable},
		{name: "link cut", cut: true, want: errRetryable},
		{name: "answer lost", back: true, want: errRetryable},
		{name: "slow link", delay: time.Second, timeout: 20 * time.Millisecond, want: ErrTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nw := NewInmemNetwork(1)
			var calls int
			ts, _ := inmemNodes(t, nw, func(id uint64) *fakeLocal {
				return &fakeLocal{propose: func(_ context.Context, reqID uint64, cmd []byte) (*statev1.Result, uint64, error) {
					calls++
					if tt.answer != nil {
						return nil, 0, tt.answer
					}
					return &statev1.Result{RequestId: reqID}, 42, nil
				}}
			}, 1, 2)
			if tt.cut {
				nw.Disconnect(1, 2)
			}
			if tt.back {
				nw.DisconnectOneWay(2, 1)
			}
			nw.SetDelay(1, 2, tt.delay)
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			res, index, err := ts[1].Forward(ctx, 2, 99, []byte("cmd"))
			switch {
			case tt.want == nil:
				if err != nil || res.GetRequestId() != 99 || index != 42 {
					t.Errorf("got %v at %d, %v; want request 99 at 42", res, index, err)
				}
			case tt.want == errRetryable:
				if !errors.Is(err, errRetry) {
					t.Errorf("got %v; want a retryable error (errRetry)", err)
				}
			case !errors.Is(err, tt.want) || errors.Is(err, errRetry):
				t.Errorf("got %v; want %v", err, tt.want)
			}
			if wantCalls := map[bool]int{true: 0, false: 1}[tt.cut || tt.delay > 0]; calls != wantCalls {
				t.Errorf("the target proposed %d times; want %d", calls, wantCalls)
			}
		})
	}
}

// TestInmemForwardEndsWhenTargetStops: a forwarded proposal waiting on
// the target ends when the target's transport stops, as a retryable error.
func TestInmemForwardEndsWhenTargetStops(t *testing.T) {
	nw := NewInmemNetwork(1)
	entered := make(chan struct{})
	ts, _ := inmemNodes(t, nw, func(id uint64) *fakeLocal {
		return &fakeLocal{propose: func(ctx context.Context, _ uint64, _ []byte) (*statev1.Result, uint64, error) {
			close(entered)
			<-ctx.Done()
			return nil, 0, ErrTimeout
		}}
	}, 1, 2)
	go func() {
		<-entered
		ts[2].Stop()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := ts[1].Forward(ctx, 2, 1, []byte("cmd")); !errors.Is(err, errRetry) {
		t.Errorf("got %v; want a retryable error", err)
	}
	if ctx.Err() != nil {
		t.Error("Forward waited until its deadline")
	}
}

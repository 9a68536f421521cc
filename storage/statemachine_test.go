package storage

import (
	"errors"
	"fmt"
	"github.com/keystore-dev/keystore/internal/commandtest"
	"github.com/keystore-dev/keystore/rules"
	"reflect"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// envelope encodes a log entry's data: a statev1.Entry carrying requestID,
// the leader's time and cmd (nil for a tick).
func envelope(requestID uint64, at int64, cmd *statev1.Command) []byte {
	env := &statev1.Entry{RequestId: requestID, Time: at}
	if cmd != nil {
		env.Command = mustMarshal(cmd)
	}
	return mustMarshal(env)
}

// logBuilder hands out consecutive log entries at one term.
type logBuilder struct {
	next, term uint64
}

func newLog() *logBuilder { return &logBuilder{next: 1, term: 1} }

// cmd returns the next entry, carrying cmd proposed at time at.
func (l *logBuilder) cmd(at int64, cmd *statev1.Command) raftpb.Entry {
	e := raftpb.Entry{Index: l.next, Term: l.term, Type: raftpb.EntryNormal, Data: envelope(l.next+500, at, cmd)}
	l.next++
	return e
}

// tick returns the next entry, a tick at time at.
func (l *logBuilder) tick(at int64) raftpb.Entry { return l.cmd(at, nil) }

// raw returns the next entry with the given type and data.
func (l *logBuilder) raw(typ raftpb.EntryType, data []byte) raftpb.Entry {
	e := raftpb.Entry{Index: l.next, Term: l.term, Type: typ, Data: data}
	l.next++
	return e
}

func TestApplyResults(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	resp := &statev1.Response{Code: 201, Metadata: map[string]string{"x": "y"}, Body: []byte("done")}
	at := func(sec int) int64 { return commandtest.T0 + int64(sec)*int64(time.Second) }
	ents := []raftpb.Entry{
		l.cmd(at(1), commandtest.Claim("fp", "alice", commandtest.Lease, commandtest.Retention)),          // 1: ACQUIRED token 1
		l.cmd(at(2), commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention)),            // 2: IN_PROGRESS
		l.cmd(at(3), commandtest.Claim("zz", "bob", commandtest.Lease, commandtest.Retention)),            // 3: mismatch
		l.cmd(at(4), commandtest.Complete(2, resp, 0)),                                                    // 4: CLAIM_LOST
		l.cmd(at(5), commandtest.Complete(1, resp, 0)),                                                    // 5: COMPLETED
		l.cmd(at(6), commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention)),            // 6: replay
		l.cmd(at(7), commandtest.Heartbeat(1, commandtest.Lease)),                                         // 7: ALREADY_COMPLETED
		l.raw(raftpb.EntryNormal, nil),                                                                    // 8: empty (new leader)
		l.raw(raftpb.EntryConfChange, []byte{0x08, 0x01}),                                                 // 9: conf change
		l.raw(raftpb.EntryNormal, []byte{0xff, 0xff, 0xff}),                                               // 10: undecodable
		l.cmd(at(11), commandtest.ClaimFor("", "k", "")),                                                  // 11: no namespace
		l.raw(raftpb.EntryNormal, mustMarshal(&statev1.Entry{Time: at(12), Command: []byte{0xff, 0xff}})), // 12: undecodable command
		l.tick(at(13)), // 13: tick
	}
	results := mustApply(t, s, ents, nil)
	if len(results) != len(ents) {
		t.Fatalf("Apply returned %d results; want %d", len(results), len(ents))
	}
	type want struct {
		err     error
		outcome statev1.Outcome
		token   uint64
		state   statev1.State
		logTime int64
	}
	wants := []*want{
		{nil, statev1.Outcome_OUTCOME_ACQUIRED, 1, statev1.State_STATE_IN_PROGRESS, at(1)},
		{nil, statev1.Outcome_OUTCOME_IN_PROGRESS, 1, statev1.State_STATE_IN_PROGRESS, at(2)},
		{rules.ErrFingerprintMismatch, 0, 0, 0, at(3)},
		{rules.ErrClaimLost, 0, 0, 0, at(4)},
		{nil, 0, 1, statev1.State_STATE_COMPLETED, at(5)},
		{nil, statev1.Outcome_OUTCOME_COMPLETED, 1, statev1.State_STATE_COMPLETED, at(6)},
		{rules.ErrAlreadyCompleted, 0, 0, 0, at(7)},
		nil,
		nil,
		{rules.ErrInvalidCommand, 0, 0, 0, 0},
		{rules.ErrInvalidCommand, 0, 0, 0, at(11)},
		{rules.ErrInvalidCommand, 0, 0, 0, at(12)},
		nil,
	}
	for i, w := range wants {
		r := (results[i])
		if w == nil {
			if r != nil {
				t.Errorf("entry %d: result %v; want none", i+1, r)
			}
			continue
		}
		if r == nil {
			t.Errorf("entry %d: no result; want one", i+1)
			continue
		}
		if err := rules.ResultError(r); !errors.Is(err, w.err) || (w.err == nil && err != nil) {
			t.Errorf("entry %d: ResultError = %v; want %v", i+1, err, w.err)
		}
		if r.GetOutcome() != w.outcome || r.GetRecord().GetToken() != w.token || r.GetRecord().GetState() != w.state {
			t.Errorf("entry %d: outcome %v token %d state %v; want %v %d %v",
				i+1, r.GetOutcome(), r.GetRecord().GetToken(), r.GetRecord().GetState(), w.outcome, w.token, w.state)
		}
		if w.logTime != 0 && r.GetLogTime() != w.logTime {
			t.Errorf("entry %d: log time %d; want %d", i+1, r.GetLogTime(), w.logTime)
		}
	}
	if r := (results[5]); !proto.Equal(r.GetRecord().GetResponse(), resp) {
		t.Errorf("replay response = %v; want %v", r.GetRecord().GetResponse(), resp)
	}
	if got := s.AppliedIndex(); got != uint64(len(ents)) {
		t.Errorf("AppliedIndex() = %d; want %d", got, len(ents))
	}
	rec, now, err := s.Get("ns", "k")
	if err != nil || rec.GetState() != statev1.State_STATE_COMPLETED || rec.GetCompletedAt() != at(5) || !proto.Equal(rec.GetResponse(), resp) {
		t.Errorf("Get(ns, k) = %v, %v; want COMPLETED at %d with %v", rec, err, at(5), resp)
	}
	if now != at(13) {
		t.Errorf("Get(ns, k) log time = %d; want %d", now, at(13))
	}
}

func TestApplyPersistsAppliedIndex(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	l := newLog()
	l.term = 4
	ents := []raftpb.Entry{
		l.cmd(commandtest.T0, commandtest.Claim("fp", "a", commandtest.Lease, commandtest.Retention)),
		l.cmd(commandtest.T0+5, commandtest.Complete(1, &statev1.Response{Code: 200}, 0)),
		l.tick(commandtest.T0 + 9),
	}
	mustAppend(t, s, raftpb.HardState{Term: 4, Commit: 3}, ents)
	mustApply(t, s, ents, nil)
	wantRec, _, err := s.Get("ns", "k")
	if err != nil {
		t.Fatalf("Get(ns, k): %v", err)
	}
	wantSum, _ := s.Checksum()
	s = reopen(t, s, fs)
	if got := s.AppliedIndex(); got != 3 {
		t.Errorf("AppliedIndex() after reopen = %d; want 3", got)
	}
	if got := s.LogTime(); got != commandtest.T0+9 {
		t.Errorf("LogTime() after reopen = %d; want %d", got, commandtest.T0+9)
	}
	if rec, _, err := s.Get("ns", "k"); err != nil || !proto.Equal(rec, wantRec) {
		t.Errorf("Get(ns, k) after reopen = %v, %v; want %v", rec, err, wantRec)
	}
	if got, _ := s.Checksum(); got != wantSum {
		t.Errorf("Checksum() after reopen = %x; want %x", got, wantSum)
	}
	snap, err := s.Snapshot()
	if err != nil || snap.Metadata.Index != 3 || snap.Metadata.Term != 4 {
		t.Errorf("Snapshot() after reopen = index %d term %d, %v; want 3, 4, nil", snap.Metadata.Index, snap.Metadata.Term, err)
	}
}

func TestApplySkipsAppliedEntries(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	first := []raftpb.Entry{
		l.cmd(commandtest.T0, commandtest.ClaimFor("ns", "a", "")),
		l.cmd(commandtest.T0+1, commandtest.ClaimFor("ns", "b", "")),
		l.cmd(commandtest.T0+2, commandtest.ClaimFor("ns", "c", "")),
	}
	mustApply(t, s, first, nil)
	sum3, _ := s.Checksum()
	// Entries 2 and 3 again, with other commands: they must be skipped.
	again := []raftpb.Entry{
		{Index: 2, Term: 1, Data: envelope(900, commandtest.T0+100, commandtest.ClaimFor("ns", "skipped-2", ""))},
		{Index: 3, Term: 1, Data: envelope(901, commandtest.T0+100, commandtest.Release(1))},
	}
	results := mustApply(t, s, again, nil)
	for i, r := range results {
		if r != nil {
			t.Errorf("result for re-applied entry %d = %v; want nil", again[i].Index, r)
		}
	}
	if got, _ := s.Checksum(); got != sum3 {
		t.Errorf("Checksum() changed by re-applied entries")
	}
	if got := s.LogTime(); got != commandtest.T0+2 {
		t.Errorf("LogTime() = %d after skipped entries; want %d", got, commandtest.T0+2)
	}
	// A batch straddling the applied index applies only the new part.
	fourth := l.cmd(commandtest.T0+3, commandtest.ClaimFor("ns", "d", ""))
	results = mustApply(t, s, append(again, fourth), nil)
	if results[0] != nil || results[1] != nil || results[2] == nil {
		t.Errorf("results for entries 2, 3, 4 = %v; want nil, nil, non-nil", results)
	}
	for _, key := range []string{"skipped-2"} {
		if _, _, err := s.Get("ns", key); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(ns, %s) error = %v; want ErrNotFound", key, err)
		}
	}
	for _, key := range []string{"a", "b", "c", "d"} {
		if _, _, err := s.Get("ns", key); err != nil {
			t.Errorf("Get(ns, %s) error = %v; want nil", key, err)
		}
	}
	if got := s.AppliedIndex(); got != 4 {
		t.Errorf("AppliedIndex() = %d; want 4", got)
	}
}

func TestLogTimeNeverMovesBackwards(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	late := commandtest.T0 + int64(time.Hour)
	results := mustApply(t, s, []raftpb.Entry{
		l.tick(late),
		// A new leader with a clock an hour behind.
		l.cmd(commandtest.T0, commandtest.Claim("fp", "a", commandtest.Lease, commandtest.Retention)),
	}, nil)
	r := (results[1])
	if r.GetLogTime() != late || r.GetRecord().GetCreatedAt() != late || r.GetRecord().GetLeaseExpiresAt() != late+commandtest.Lease {
		t.Errorf("claim at an older time: log time %d created_at %d lease_expires_at %d; want %d, %d, %d",
			r.GetLogTime(), r.GetRecord().GetCreatedAt(), r.GetRecord().GetLeaseExpiresAt(), late, late, late+commandtest.Lease)
	}
	if got := s.LogTime(); got != late {
		t.Errorf("LogTime() = %d; want %d", got, late)
	}
	// Across batches too.
	mustApply(t, s, []raftpb.Entry{l.tick(commandtest.T0)}, nil)
	if got := s.LogTime(); got != late {
		t.Errorf("LogTime() after an older tick = %d; want %d", got, late)
	}
}

func TestApplyBatchSeesItsOwnWrites(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	resp := &statev1.Response{Code: 200, Body: []byte("ok")}
	ents := []raftpb.Entry{
		l.cmd(commandtest.T0, commandtest.Claim("fp", "a", commandtest.Lease, commandtest.Retention)),                                           // 1
		l.cmd(commandtest.T0+1, commandtest.Complete(1, resp, 0)),                                                                               // 2
		l.cmd(commandtest.T0+2, commandtest.ClaimFor("ns", "r", "")),                                                                            // 3
		l.cmd(commandtest.T0+3, &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "ns", Key: "r", Token: 3}}}), // 4
		l.cmd(commandtest.T0+4, commandtest.ClaimFor("ns", "r", "")),                                                                            // 5
	}
	results := mustApply(t, s, ents, nil)
	if r := (results[1]); r.GetError() != statev1.Error_ERROR_UNSPECIFIED || r.GetRecord().GetState() != statev1.State_STATE_COMPLETED {
		t.Errorf("complete in the claim's batch = %v; want COMPLETED", r)
	}
	if r := (results[3]); r.GetError() != statev1.Error_ERROR_UNSPECIFIED {
		t.Errorf("release in the claim's batch = %v; want OK", r)
	}
	if r := (results[4]); r.GetOutcome() != statev1.Outcome_OUTCOME_ACQUIRED || r.GetRecord().GetToken() != 5 {
		t.Errorf("claim after release in one batch = %v; want ACQUIRED token 5", r)
	}
	if rec, _, err := s.Get("ns", "k"); err != nil || rec.GetState() != statev1.State_STATE_COMPLETED || !proto.Equal(rec.GetResponse(), resp) {
		t.Errorf("Get(ns, k) = %v, %v; want COMPLETED with %v", rec, err, resp)
	}
	if rec, _, err := s.Get("ns", "r"); err != nil || rec.GetToken() != 5 {
		t.Errorf("Get(ns, r) = %v, %v; want token 5", rec, err)
	}
}

func TestConfStatePersisted(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	l := newLog()
	want := raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}
	cc := raftpb.ConfChange{Type: raftpb.ConfChangeAddLearnerNode, NodeID: 4}
	data, err := cc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, []raftpb.Entry{l.tick(commandtest.T0), l.raw(raftpb.EntryConfChange, data)}, &want)
	// A later batch without a conf change keeps it.
	mustApply(t, s, []raftpb.Entry{l.tick(commandtest.T0 + 1)}, nil)
	if _, cs, _ := s.InitialState(); !reflect.DeepEqual(cs, want) {
		t.Errorf("InitialState() ConfState = %v; want %v", cs, want)
	}
	s = reopen(t, s, fs)
	if _, cs, _ := s.InitialState(); !reflect.DeepEqual(cs, want) {
		t.Errorf("InitialState() ConfState after reopen = %v; want %v", cs, want)
	}
	if snap, err := s.Snapshot(); err != nil || !reflect.DeepEqual(snap.Metadata.ConfState, want) {
		t.Errorf("Snapshot() ConfState = %v, %v; want %v", snap.Metadata.ConfState, err, want)
	}
}

func TestGetJudgesExpiryAtLogTime(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	retention := int64(10 * time.Second)
	claim := &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
		Namespace: "ns", Key: "k", Lease: retention, Retention: retention,
	}}}
	mustApply(t, s, []raftpb.Entry{l.cmd(commandtest.T0, claim)}, nil)
	tests := []struct {
		name    string
		tick    int64 // 0: no tick
		wantErr error
	}{
		{"at claim time", 0, nil},
		{"one nanosecond before expires_at", commandtest.T0 + retention - 1, nil},
		{"at expires_at", commandtest.T0 + retention, ErrNotFound},
		{"after expires_at", commandtest.T0 + retention + int64(time.Hour), ErrNotFound},
	}
	for _, tt := range tests {
		if tt.tick != 0 {
			mustApply(t, s, []raftpb.Entry{l.tick(tt.tick)}, nil)
		}
		rec, now, err := s.Get("ns", "k")
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
			t.Errorf("%s: Get(ns, k) = %v, %v; want error %v", tt.name, rec, err, tt.wantErr)
		}
		if tt.tick != 0 && now != tt.tick {
			t.Errorf("%s: Get log time = %d; want %d", tt.name, now, tt.tick)
		}
		if tt.wantErr != nil && rec != nil {
			t.Errorf("%s: Get returned record %v with %v; want nil", tt.name, rec, err)
		}
	}
	for _, k := range [][2]string{{"ns", "absent"}, {"other", "k"}, {string(make([]byte, 300)), "k"}} {
		if _, _, err := s.Get(k[0], k[1]); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q, %q) error = %v; want ErrNotFound", k[0], k[1], err)
		}
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestWatch(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	mine, cancelMine := s.Watch("ns", "k")
	defer cancelMine()
	other, cancelOther := s.Watch("ns", "other")
	defer cancelOther()
	otherNS, cancelOtherNS := s.Watch("ns2", "k")
	defer cancelOtherNS()
	cancelled, cancel := s.Watch("ns", "k")
	cancel()

	mustApply(t, s, []raftpb.Entry{l.cmd(commandtest.T0, commandtest.Claim("fp", "a", commandtest.Lease, commandtest.Retention))}, nil)
	if !closed(mine) {
		t.Errorf("Watch(ns, k) open after a claim on ns/k; want closed")
	}
	if closed(other) || closed(otherNS) {
		t.Errorf("Watch of another key closed by a claim on ns/k; want open")
	}
	if closed(cancelled) {
		t.Errorf("cancelled Watch closed; want open")
	}

	// A command that changes nothing (a claim answered IN_PROGRESS) does
	// not fire.
	again, cancelAgain := s.Watch("ns", "k")
	defer cancelAgain()
	mustApply(t, s, []raftpb.Entry{l.cmd(commandtest.T0+1, commandtest.Claim("fp", "b", commandtest.Lease, commandtest.Retention))}, nil)
	if closed(again) {
		t.Errorf("Watch(ns, k) closed by a claim that changed nothing; want open")
	}
	// Release removes the record: fires.
	mustApply(t, s, []raftpb.Entry{l.cmd(commandtest.T0+2, commandtest.Release(1))}, nil)
	if !closed(again) {
		t.Errorf("Watch(ns, k) open after a release; want closed")
	}
	if closed(other) || closed(otherNS) {
		t.Errorf("Watch of another key closed; want open")
	}
}

// applyAll applies ents to s in batches of the given sizes (the rest in one
// last batch).
func applyAll(t *testing.T, s *Store, ents []raftpb.Entry, sizes ...int) {
	t.Helper()
	for _, n := range sizes {
		mustApply(t, s, ents[:n], nil)
		ents = ents[n:]
	}
	if len(ents) > 0 {
		mustApply(t, s, ents, nil)
	}
}

// workload is a log touching several keys with every kind of command.
func workload() []raftpb.Entry {
	l := newLog()
	var ents []raftpb.Entry
	for i := range 5 {
		key := fmt.Sprintf("key-%d", i)
		at := commandtest.T0 + int64(i)*int64(time.Second)
		ents = append(ents, l.cmd(at, commandtest.ClaimFor("ns", key, "fp")))
	}
	ents = append(ents,
		l.cmd(commandtest.T0+int64(6*time.Second), &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
			Namespace: "ns", Key: "key-0", Token: 1, Response: &statev1.Response{Code: 200, Metadata: map[string]string{"a": "1", "b": "2", "c": "3"}},
		}}}),
		l.cmd(commandtest.T0+int64(7*time.Second), &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "ns", Key: "key-1", Token: 2}}}),
		l.cmd(commandtest.T0+int64(8*time.Second), &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{Namespace: "ns", Key: "key-2", Token: 3, Lease: commandtest.Lease}}}),
		l.tick(commandtest.T0+int64(time.Minute)),
		l.cmd(commandtest.T0+int64(time.Minute)+1, commandtest.ClaimFor("ns", "key-3", "fp")), // takeover
		l.cmd(commandtest.T0+int64(time.Minute)+2, commandtest.ClaimFor("ns2", "key-0", "")),
		// Short-lived records, swept in the middle of the log, and a key
		// claimed again after its sweep: a batch with an Expire reads the
		// index through its overlay (applyBatch) as well as the records.
		l.cmd(commandtest.T0+int64(time.Minute)+3, shortClaim("brief-0")),
		l.cmd(commandtest.T0+int64(time.Minute)+4, shortClaim("brief-1")),
		l.cmd(commandtest.T0+int64(time.Minute)+5, &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
			Namespace: "ns", Key: "brief-1", Token: 13, Response: &statev1.Response{Code: 201},
		}}}),
		l.tick(commandtest.T0+int64(2*time.Minute)),
		l.cmd(commandtest.T0+int64(2*time.Minute)+1, &statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: commandtest.T0 + int64(2*time.Minute), Limit: 10}}}),
		l.cmd(commandtest.T0+int64(2*time.Minute)+2, shortClaim("brief-0")),
		l.cmd(commandtest.T0+int64(2*time.Minute)+3, commandtest.ClaimFor("ns", "key-4", "fp")),
		// A packed entry (index 19): several records at one index.
		l.packed(commandtest.T0+int64(2*time.Minute)+4, 900,
			commandtest.ClaimFor("ns", "key-5", "fp"),
			&statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{Namespace: "ns", Key: "brief-0", Token: 17}}},
			&statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{Namespace: "ns", Key: "key-4", Token: 18, Lease: commandtest.Lease}}}),
	)
	return ents
}

func shortClaim(key string) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
		Namespace: "ns", Key: key, Lease: int64(time.Second), Retention: int64(2 * time.Second),
	}}}
}

func TestReplicasConverge(t *testing.T) {
	ents := workload()
	var sums [][32]byte
	for _, sizes := range [][]int{nil, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 4}, {12, 3}, {14, 2}, {len(ents) - 1}} {
		s := openStore(t, vfs.NewMem())
		applyAll(t, s, ents, sizes...)
		sum, err := s.Checksum()
		if err != nil {
			t.Fatalf("Checksum(): %v", err)
		}
		sums = append(sums, sum)
		// The sweep happened, and the swept key was claimed afresh.
		if _, _, err := s.Get("ns", "brief-1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("batches %v: brief-1 after its sweep: %v; want ErrNotFound", sizes, err)
		}
		if rec, _, err := s.Get("ns", "brief-0"); err != nil || rec.GetAttempt() != 1 || rec.GetCreatedAt() != commandtest.T0+int64(2*time.Minute)+2 {
			t.Errorf("batches %v: brief-0 claimed again after its sweep = %v, %v; want a fresh record", sizes, rec, err)
		}
	}
	for i := 1; i < len(sums); i++ {
		if sums[i] != sums[0] {
			t.Errorf("replica %d checksum %x; want %x (replica 0's)", i, sums[i], sums[0])
		}
	}
	// A replica that misses the last entry differs.
	s := openStore(t, vfs.NewMem())
	applyAll(t, s, ents[:len(ents)-1])
	if sum, _ := s.Checksum(); sum == sums[0] {
		t.Errorf("checksum of a replica one entry behind equals the others'; want different")
	}
}

// TestCrashKeepsSyncedLog simulates power loss: what Append synced survives,
// and the applied state on restart is at most the log, and catches up to the
// same state by re-applying the log.
func TestCrashKeepsSyncedLog(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s := openStore(t, fs)
	ents := workload()
	hs1 := raftpb.HardState{Term: 1, Vote: 1, Commit: 5}
	mustAppend(t, s, hs1, ents[:5])
	mustApply(t, s, ents[:5], nil)
	hs2 := raftpb.HardState{Term: 1, Vote: 1, Commit: uint64(len(ents))}
	mustAppend(t, s, hs2, ents[5:])
	mustApply(t, s, ents[5:8], nil)
	wantSum := func() [32]byte {
		mustApply(t, s, ents[8:], nil)
		sum, _ := s.Checksum()
		return sum
	}()

	c := openStore(t, fs.CrashClone(vfs.CrashCloneCfg{}))
	last := uint64(len(ents))
	checkBounds(t, c, 1, last)
	checkEntries(t, c, 1, last+1, ents)
	if hs, _, _ := c.InitialState(); !reflect.DeepEqual(hs, hs2) {
		t.Errorf("HardState after crash = %v; want %v", hs, hs2)
	}
	applied := c.AppliedIndex()
	if applied > last {
		t.Fatalf("AppliedIndex() after crash = %d; want at most LastIndex %d", applied, last)
	}
	// Re-applying the log from the applied index reaches the same state.
	rest, err := c.Entries(applied+1, last+1, ^uint64(0))
	if err != nil && applied < last {
		t.Fatalf("Entries(%d, %d): %v", applied+1, last+1, err)
	}
	mustApply(t, c, rest, nil)
	if got, _ := c.Checksum(); got != wantSum {
		t.Errorf("Checksum() after crash and re-apply = %x; want %x", got, wantSum)
	}
}

// TestCrashLosesNothingAfterSyncedAppend crashes right after a synced
// Append with nothing applied.
func TestCrashLosesNothingAfterSyncedAppend(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s := openStore(t, fs)
	ents := logEntries(1, 21, stepTerms)
	hs := raftpb.HardState{Term: 3, Vote: 2, Commit: 20}
	mustAppend(t, s, hs, ents)
	c := openStore(t, fs.CrashClone(vfs.CrashCloneCfg{}))
	checkBounds(t, c, 1, 20)
	for i := uint64(1); i <= 20; i++ {
		checkTerm(t, c, i, stepTerms(i), nil)
	}
	checkEntries(t, c, 1, 21, ents)
	if got, _, _ := c.InitialState(); !reflect.DeepEqual(got, hs) {
		t.Errorf("HardState after crash = %v; want %v", got, hs)
	}
	if got := c.AppliedIndex(); got != 0 {
		t.Errorf("AppliedIndex() after crash = %d; want 0", got)
	}
}

func TestApplyAfterClose(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Apply([]raftpb.Entry{newLog().tick(commandtest.T0)}, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close error = %v; want ErrClosed", err)
	}
	if _, _, err := s.Get("ns", "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close error = %v; want ErrClosed", err)
	}
}

package storage

import (
	"errors"
	"github.com/keystore-dev/keystore/internal/commandtest"
	"github.com/keystore-dev/keystore/rules"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// packedEntry encodes a packed entry: one proposal per command, with
// request ids firstID, firstID+1, ...; a nil command is sent as garbage.
func (l *logBuilder) packed(at int64, firstID uint64, cmds ...*statev1.Command) raftpb.Entry {
	env := &statev1.Entry{Time: at}
	for i, c := range cmds {
		p := &statev1.Proposal{RequestId: firstID + uint64(i), Command: []byte{0xff, 0xff}}
		if c != nil {
			p.Command = mustMarshal(c)
		}
		env.Proposals = append(env.Proposals, p)
	}
	return l.raw(raftpb.EntryNormal, mustMarshal(env))
}

func TestApplyPackedEntry(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	at := func(sec int) int64 { return commandtest.T0 + int64(sec)*int64(time.Second) }
	resp := &statev1.Response{Code: 200, Body: []byte("ok")}
	expire := &statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: at(2), Limit: 10}}}
	otherHeartbeat := &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{
		Namespace: "other", Key: "k", Token: 2, Lease: commandtest.Lease}}}
	ents := []raftpb.Entry{
		l.cmd(at(1), commandtest.Claim("fp", "alice", commandtest.Lease, commandtest.Retention)), // 1: ns/k token 1
		l.cmd(at(1), commandtest.ClaimFor("other", "k", "fb")),                                   // 2: other/k token 2
		l.packed(at(2), 100, // 3
			commandtest.Complete(1, resp, 0),      // ns/k COMPLETED
			commandtest.ClaimFor("ns", "a", "fa"), // ns/a ACQUIRED token 3
			commandtest.ClaimFor("ns", "a", "fa"), // ns/a again in one entry: refused
			nil,                                   // undecodable: refused
			expire,                                // not a single-record command: refused
			commandtest.ClaimFor("ns", "b", "fb"), // a second claim would share token 3: refused
			otherHeartbeat,                        // same key, other namespace: applied
			commandtest.Heartbeat(1, commandtest.Lease)), // ns/k named twice: refused
		l.cmd(at(3), commandtest.ClaimFor("ns", "a", "fa")), // 4: in progress with token 3
	}
	res := mustApply(t, s, ents, nil)
	packed := res[2].GetPacked()
	type want struct {
		err     error
		outcome statev1.Outcome
		token   uint64
	}
	wants := []want{
		{nil, 0, 1},
		{nil, statev1.Outcome_OUTCOME_ACQUIRED, 3},
		{rules.ErrInvalidCommand, 0, 0},
		{rules.ErrInvalidCommand, 0, 0},
		{rules.ErrInvalidCommand, 0, 0},
		{rules.ErrInvalidCommand, 0, 0},
		{nil, 0, 2},
		{rules.ErrInvalidCommand, 0, 0},
	}
	if len(packed) != len(wants) {
		t.Fatalf("packed entry: %d results; want %d", len(packed), len(wants))
	}
	for i, w := range wants {
		r := packed[i]
		if err := rules.ResultError(r); !errors.Is(err, w.err) || (w.err == nil && err != nil) {
			t.Errorf("proposal %d: ResultError = %v; want %v", i, err, w.err)
		}
		if r.GetOutcome() != w.outcome || r.GetRecord().GetToken() != w.token {
			t.Errorf("proposal %d: outcome %v token %d; want %v %d", i, r.GetOutcome(), r.GetRecord().GetToken(), w.outcome, w.token)
		}
		if r.GetRequestId() != 100+uint64(i) || r.GetLogTime() != at(2) {
			t.Errorf("proposal %d: request id %d log time %d; want %d %d", i, r.GetRequestId(), r.GetLogTime(), 100+i, at(2))
		}
	}
	if r := res[3]; r.GetOutcome() != statev1.Outcome_OUTCOME_IN_PROGRESS || r.GetRecord().GetToken() != 3 {
		t.Errorf("claim after the packed entry: %v token %d; want IN_PROGRESS token 3", r.GetOutcome(), r.GetRecord().GetToken())
	}
	if _, _, err := s.Get("ns", "b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(ns, b) after its refused claim: %v; want ErrNotFound", err)
	}
	if rec, _, err := s.Get("ns", "k"); err != nil || rec.GetState() != statev1.State_STATE_COMPLETED || !proto.Equal(rec.GetResponse(), resp) {
		t.Errorf("Get(ns, k) = %v, %v; want COMPLETED with %v", rec, err, resp)
	}
	if got := s.AppliedIndex(); got != 4 {
		t.Errorf("AppliedIndex() = %d; want 4", got)
	}
}

// TestApplyRefusesNamespaceBeyondKeyEncoding: a namespace longer than the
// record key encoding admits is an invalid command (the API's limit is far
// lower, so only a bug or a forged entry carries one), and nothing is
// stored.
func TestApplyRefusesNamespaceBeyondKeyEncoding(t *testing.T) {
	s := openStore(t, vfs.NewMem())
	l := newLog()
	long := strings.Repeat("n", maxNamespaceLen+1)
	res := mustApply(t, s, []raftpb.Entry{l.cmd(commandtest.T0, commandtest.ClaimFor(long, "k", ""))}, nil)
	if err := rules.ResultError(res[0]); !errors.Is(err, rules.ErrInvalidCommand) {
		t.Errorf("claim in a %d-byte namespace: %v; want ErrInvalidCommand", len(long), err)
	}
	if got := s.AppliedIndex(); got != 1 {
		t.Errorf("AppliedIndex() = %d; want 1", got)
	}
}

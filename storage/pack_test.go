package storage

import (
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
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
	at := func(sec int) int64 { return t0 + int64(sec)*int64(time.Second) }
	resp := &statev1.Response{Code: 200, Body: []byte("ok")}
	expire := &statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: at(2), Limit: 10}}}
	otherHeartbeat := &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{
		Namespace: "other", Key: "k", Token: 2, Lease: testLease}}}
	ents := []raftpb.Entry{
		l.cmd(at(1), claimCmd("fp", "alice", testLease, testRetention)), // 1: ns/k token 1
		l.cmd(at(1), claimCmdFor("other", "k", "fb")),                   // 2: other/k token 2
		l.packed(at(2), 100, // 3
			completeCmd(1, resp, 0),      // ns/k COMPLETED
			claimCmdFor("ns", "a", "fa"), // ns/a ACQUIRED token 3
			claimCmdFor("ns", "a", "fa"), // ns/a again in one entry: refused
			nil,                          // undecodable: refused
			expire,                       // not a single-record command: refused
			claimCmdFor("ns", "b", "fb"), // a second claim would share token 3: refused
			otherHeartbeat,               // same key, other namespace: applied
			heartbeatCmd(1, testLease)),  // ns/k named twice: refused
		l.cmd(at(3), claimCmdFor("ns", "a", "fa")), // 4: in progress with token 3
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
		{ErrInvalidCommand, 0, 0},
		{ErrInvalidCommand, 0, 0},
		{ErrInvalidCommand, 0, 0},
		{ErrInvalidCommand, 0, 0},
		{nil, 0, 2},
		{ErrInvalidCommand, 0, 0},
	}
	if len(packed) != len(wants) {
		t.Fatalf("packed entry: %d results; want %d", len(packed), len(wants))
	}
	for i, w := range wants {
		r := packed[i]
		if err := ResultError(r); !errors.Is(err, w.err) || (w.err == nil && err != nil) {
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

// TestPackKey: the key names exactly the record Apply will change, and
// what must travel alone is refused.
func TestPackKey(t *testing.T) {
	cmds := []*statev1.Command{
		claimCmdFor("ns", "k", "fp"),
		completeCmd(7, &statev1.Response{Code: 200, Body: []byte("body")}, 0),
		releaseCmd(7),
		heartbeatCmd(7, testLease),
	}
	var first string
	for i, c := range cmds {
		key, grants, ok := packKey(mustMarshal(c))
		if !ok {
			t.Fatalf("command %d: not packable; want packable", i)
		}
		if grants != (i == 0) {
			t.Errorf("command %d: grants %v; want %v (only a Claim grants)", i, grants, i == 0)
		}
		if i == 0 {
			first = key
		} else if key != first {
			t.Errorf("command %d on ns/k: key %q; want %q (the claim's)", i, key, first)
		}
	}
	distinct := map[string]bool{}
	for _, target := range [][2]string{{"ns", "k"}, {"ns", "k2"}, {"ns2", "k"}, {"n", "sk"}, {"ns\x00", "k"}, {"ns", "\x00k"}} {
		key, _, ok := packKey(mustMarshal(claimCmdFor(target[0], target[1], "")))
		if !ok || distinct[key] {
			t.Errorf("claim of %q/%q: key %q, %v; want a key of its own", target[0], target[1], key, ok)
		}
		distinct[key] = true
	}
	// Two ops in one command (decoding would merge them): refused rather
	// than reasoned about.
	twice := append(mustMarshal(claimCmdFor("ns", "first", "")), mustMarshal(claimCmdFor("ns", "k", ""))...)
	if key, _, ok := packKey(twice); ok {
		t.Errorf("packKey(two ops) = %q, true; want refused", key)
	}
	// A repeated string field: the last value wins, as when decoding.
	var claim []byte
	claim = protowire.AppendTag(claim, 1, protowire.BytesType)
	claim = protowire.AppendString(claim, "ns")
	claim = protowire.AppendTag(claim, 2, protowire.BytesType)
	claim = protowire.AppendString(claim, "first")
	claim = protowire.AppendTag(claim, 2, protowire.BytesType)
	claim = protowire.AppendString(claim, "k")
	cmd := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), claim)
	var decoded statev1.Command
	if err := proto.Unmarshal(cmd, &decoded); err != nil || decoded.GetClaim().GetKey() != "k" {
		t.Fatalf("decoding the repeated key: %v, %v", decoded.GetClaim(), err)
	}
	if key, _, ok := packKey(cmd); !ok || key != first {
		t.Errorf("packKey(key \"first\" then \"k\") = %q, %v; want %q (ns/k's)", key, ok, first)
	}
	for name, b := range map[string][]byte{
		"expire":       mustMarshal(&statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: 1}}}),
		"empty":        nil,
		"garbage":      {0xff, 0xff, 0xff},
		"no namespace": mustMarshal(claimCmdFor("", "k", "")),
		"no key":       mustMarshal(claimCmdFor("ns", "", "")),
		"truncated":    mustMarshal(claimCmdFor("ns", "k", "fp"))[:5],
	} {
		if key, _, ok := packKey(b); ok {
			t.Errorf("%s: packKey = %q, true; want refused", name, key)
		}
	}
}

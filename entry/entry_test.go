package entry

import (
	"github.com/keystore-dev/keystore/internal/commandtest"
	"testing"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// TestPackerRules: a packed entry never names a record twice, never holds
// two token-granting proposals nor one that must travel alone, and keeps
// to its limits; an empty entry takes anything.
func TestPackerRules(t *testing.T) {
	p := func(key string, grants bool, size int) *Proposal {
		return &Proposal{Key: key, Grants: grants, Command: make([]byte, size)}
	}
	pk := NewPacker(Limits{MaxProposals: 3, MaxBytes: 100})
	if !pk.Fits(p("", false, 1000)) {
		t.Fatal("an empty entry refused a lone, large proposal; want it to fit")
	}
	pk.Add(p("a", true, 10))
	for name, q := range map[string]*Proposal{
		"same record":  p("a", false, 1),
		"second grant": p("b", true, 1),
		"alone":        p("", false, 1),
		"too large":    p("b", false, 91),
	} {
		if pk.Fits(q) {
			t.Errorf("%s: fits; want refused", name)
		}
	}
	if !pk.Fits(p("b", false, 90)) {
		t.Error("another record within the limits: refused; want it to fit")
	}
	pk.Add(p("b", false, 1))
	pk.Add(p("c", false, 1))
	if pk.Fits(p("d", false, 1)) || !pk.Admits(p("d", false, 1)) {
		t.Error("a fourth proposal: want refused by the count limit, admitted by the rules")
	}
	pk.Reset()
	if pk.Len() != 0 || !pk.Admits(p("a", true, 1)) {
		t.Error("after Reset: want an empty entry that admits a and a grant")
	}
}

// TestEncodeHeaderAnswers: what Encode writes, Header and Decode read
// back, and Answers routes each result to its proposer.
func TestEncodeHeaderAnswers(t *testing.T) {
	one := NewProposal(42, mustMarshal(commandtest.Release(7)))
	data, err := Encode(1_234_567, []*Proposal{&one})
	if err != nil {
		t.Fatal(err)
	}
	id, at, ok := Header(data)
	if !ok || id != 42 || at != 1_234_567 {
		t.Fatalf("Header = %d, %d, %v; want 42, 1234567, true", id, at, ok)
	}
	got := map[uint64]*statev1.Result{}
	answer := func(id uint64, r *statev1.Result) { got[id] = r }
	single := &statev1.Result{Outcome: statev1.Outcome_OUTCOME_ACQUIRED}
	Answers(id, single, answer)
	if len(got) != 1 || got[42] != single {
		t.Fatalf("single: answered %v; want 42 only", got)
	}

	a, b := NewProposal(1, mustMarshal(commandtest.ClaimFor("ns", "a", ""))), NewProposal(2, mustMarshal(commandtest.ClaimFor("ns", "b", "")))
	data, err = Encode(5, []*Proposal{&a, &b})
	if err != nil {
		t.Fatal(err)
	}
	var env statev1.Entry
	if err := Decode(data, &env); err != nil || len(env.Proposals) != 2 || env.Time != 5 || env.RequestId != 0 {
		t.Fatalf("Decode(packed) = %v, %v; want two proposals at time 5", &env, err)
	}
	id, _, _ = Header(data)
	clear(got)
	Answers(id, &statev1.Result{Packed: []*statev1.Result{{RequestId: 1}, {RequestId: 2}, {RequestId: 0}}}, answer)
	if len(got) != 2 || got[1].GetRequestId() != 1 || got[2].GetRequestId() != 2 {
		t.Fatalf("packed: answered %v; want 1 and 2", got)
	}
	clear(got)
	Answers(9, nil, answer)
	Answers(0, single, answer)
	if len(got) != 0 {
		t.Fatalf("nil result or no request id: answered %v; want nobody", got)
	}

	if id, at, ok := Header(Tick(77)); !ok || id != 0 || at != 77 {
		t.Fatalf("Header(Tick(77)) = %d, %d, %v; want 0, 77, true", id, at, ok)
	}
	if _, _, ok := Header([]byte{0xff, 0xff, 0xff}); ok {
		t.Fatal("Header(garbage) ok; want false")
	}
	if id, at, ok := Header(nil); !ok || id != 0 || at != 0 {
		t.Fatalf("Header(empty) = %d, %d, %v; want 0, 0, true", id, at, ok)
	}
}

// TestNewProposal: a proposal's key and grant come from PackKey.
func TestNewProposal(t *testing.T) {
	c := NewProposal(1, mustMarshal(commandtest.ClaimFor("ns", "k", "")))
	r := NewProposal(2, mustMarshal(commandtest.Release(7)))
	e := NewProposal(3, mustMarshal(&statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: 1}}}))
	if c.Key == "" || !c.Grants || r.Key != c.Key || r.Grants || e.Key != "" {
		t.Errorf("claim %+v, release %+v, expire %+v; want claim and release on one key, only the claim granting, the expire alone", c, r, e)
	}
}

// TestPackKey: the key names exactly the record Apply will change, and
// what must travel alone is refused.
func TestPackKey(t *testing.T) {
	cmds := []*statev1.Command{
		commandtest.ClaimFor("ns", "k", "fp"),
		commandtest.Complete(7, &statev1.Response{Code: 200, Body: []byte("body")}, 0),
		commandtest.Release(7),
		commandtest.Heartbeat(7, commandtest.Lease),
	}
	var first string
	for i, c := range cmds {
		key, grants, ok := PackKey(mustMarshal(c))
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
		key, _, ok := PackKey(mustMarshal(commandtest.ClaimFor(target[0], target[1], "")))
		if !ok || distinct[key] {
			t.Errorf("claim of %q/%q: key %q, %v; want a key of its own", target[0], target[1], key, ok)
		}
		distinct[key] = true
	}
	// Two ops in one command (decoding would merge them): refused rather
	// than reasoned about.
	twice := append(mustMarshal(commandtest.ClaimFor("ns", "first", "")), mustMarshal(commandtest.ClaimFor("ns", "k", ""))...)
	if key, _, ok := PackKey(twice); ok {
		t.Errorf("PackKey(two ops) = %q, true; want refused", key)
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
	if key, _, ok := PackKey(cmd); !ok || key != first {
		t.Errorf("PackKey(key \"first\" then \"k\") = %q, %v; want %q (ns/k's)", key, ok, first)
	}
	for name, b := range map[string][]byte{
		"expire":       mustMarshal(&statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: 1}}}),
		"empty":        nil,
		"garbage":      {0xff, 0xff, 0xff},
		"no namespace": mustMarshal(commandtest.ClaimFor("", "k", "")),
		"no key":       mustMarshal(commandtest.ClaimFor("ns", "", "")),
		"truncated":    mustMarshal(commandtest.ClaimFor("ns", "k", "fp"))[:5],
	} {
		if key, _, ok := PackKey(b); ok {
			t.Errorf("%s: packKey = %q, true; want refused", name, key)
		}
	}
}

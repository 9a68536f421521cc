package entry

import (
	"encoding/binary"
	"testing"

	"github.com/keystore-dev/keystore/internal/commandtest"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"github.com/keystore-dev/keystore/rules"
	"google.golang.org/protobuf/proto"
)

// envelopeSeeds are real entries: each form Encode writes, a tick, and a
// few damaged ones.
func envelopeSeeds() [][]byte {
	one := NewProposal(42, mustMarshal(commandtest.Release(7)))
	a := NewProposal(1, mustMarshal(commandtest.ClaimFor("ns", "a", "fp")))
	b := NewProposal(2, mustMarshal(commandtest.ClaimFor("ns", "b", "")))
	single, _ := Encode(commandtest.T0, []*Proposal{&one})
	packed, _ := Encode(commandtest.T0+1, []*Proposal{&a, &b})
	return [][]byte{
		single,
		packed,
		Tick(commandtest.T0),
		Tick(-1),
		nil,
		single[:len(single)-1],
		append([]byte{0x08}, single...),        // a field cut short
		append(single, 0x10, 0x01),             // time given twice: the last wins
		append(single, 0x0a, 0x00),             // field 1 as bytes: an unknown field
		append(single, 0x0b, 0x10, 0x01, 0x0c), // a group holding a time
		append([]byte{0x00}, single...),        // field number 0
		{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, // request id MaxUint64
	}
}

// FuzzEnvelope: Header and Decode never panic on any entry data; an entry
// Decode accepts Header reads too (raftnode answers proposers by Header,
// storage applies by Decode), and where both succeed they agree on the
// request id and the time. Answers routes a decoded entry's results
// without panicking.
func FuzzEnvelope(f *testing.F) {
	for _, s := range envelopeSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		reqID, at, ok := Header(data)
		var env statev1.Entry
		err := Decode(data, &env)
		if err != nil {
			return // Header may read what Decode refuses: a bad command is Apply's
		}
		if !ok {
			t.Fatalf("Header(%x) refused an entry Decode accepts (%v)", data, &env)
		}
		if reqID != env.GetRequestId() || at != env.GetTime() {
			t.Fatalf("Header(%x) = (%d, %d); Decode gives (%d, %d)", data, reqID, at, env.GetRequestId(), env.GetTime())
		}
		res := &statev1.Result{}
		if len(env.GetProposals()) > 0 {
			for _, p := range env.GetProposals() {
				res.Packed = append(res.Packed, &statev1.Result{RequestId: p.GetRequestId()})
			}
		}
		Answers(reqID, res, func(id uint64, r *statev1.Result) {
			if id == 0 {
				t.Fatalf("Answers handed a result to request id 0")
			}
		})
	})
}

// packKeySeeds are encoded commands of every kind, and a few the state
// machine decodes differently than a naive reader would.
func packKeySeeds() [][]byte {
	claim := mustMarshal(commandtest.ClaimFor("ns", "k", "fp"))
	return [][]byte{
		claim,
		mustMarshal(commandtest.Complete(3, &statev1.Response{Code: 200, Body: []byte("ok")}, 0)),
		mustMarshal(commandtest.Release(3)),
		mustMarshal(commandtest.Heartbeat(3, commandtest.Lease)),
		mustMarshal(&statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: 5, Limit: 10}}}),
		mustMarshal(commandtest.ClaimFor("", "k", "")),
		mustMarshal(commandtest.ClaimFor("ns", "", "")),
		append(claim, claim...),                               // the op twice: proto merges them
		append(claim, mustMarshal(commandtest.Release(1))...), // a second op: the last wins
		append([]byte{0x0a, 0x03, 0x0a, 0x01, 'x'}, claim...),
		{0x0a, 0x06, 0x0a, 0x01, 'a', 0x12, 0x01, 0xff}, // a key that is not UTF-8
		nil,
	}
}

// FuzzPackKey: PackKey never panics, and for a command it accepts and the
// state machine decodes, it names exactly the record the state machine
// changes (rules.Target), its key encodes that namespace and key, and it
// grants a token exactly for a Claim. A key that disagreed would let the
// leader pack two commands on one record into one entry.
func FuzzPackKey(f *testing.F) {
	for _, s := range packKeySeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, command []byte) {
		key, grants, ok := PackKey(command)
		p := NewProposal(9, command)
		if p.Key != key || p.Grants != (ok && grants) {
			t.Fatalf("NewProposal = {Key %q, Grants %v}; PackKey = (%q, %v, %v)", p.Key, p.Grants, key, grants, ok)
		}
		if !ok {
			if key != "" {
				t.Fatalf("PackKey(%x) refused but named key %q", command, key)
			}
			return
		}
		if key == "" {
			t.Fatalf("PackKey(%x) accepted with an empty key", command)
		}
		cmd := &statev1.Command{}
		if err := proto.Unmarshal(command, cmd); err != nil {
			return // applied as an invalid command whatever the key
		}
		ns, k, target := rules.Target(cmd)
		if !target {
			t.Fatalf("PackKey(%x) = %q, but the state machine finds no record in %v", command, key, cmd)
		}
		n, m := binary.Uvarint([]byte(key))
		if m <= 0 || uint64(len(key)-m) < n || key[m:m+int(n)] != ns || key[m+int(n):] != k {
			t.Fatalf("PackKey(%x) = %q; the state machine changes %q/%q", command, key, ns, k)
		}
		_, isClaim := cmd.GetOp().(*statev1.Command_Claim)
		if grants != isClaim {
			t.Fatalf("PackKey(%x) grants = %v; the command is %T", command, grants, cmd.GetOp())
		}
	})
}

package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/entry"
	"github.com/keystore-dev/keystore/internal/commandtest"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The apply targets start every input from the same state, written by
// fuzzPreamble at indexes 1-4, so that commands naming its records and
// tokens (1 for ns/k, 2 for ns/done, 4 for ns/short) meet a record:
//
//	ns/k      IN_PROGRESS, token 1, lease to T0+30s, expires T0+24h
//	ns/done   COMPLETED (token 2), expires T0+24h
//	ns/short  IN_PROGRESS, token 4, expires T0+3s: an Expire after it sweeps it
const fuzzFirst = 5 // the index of the first fuzzed entry

func fuzzAt(sec int) int64 { return commandtest.T0 + int64(sec)*int64(time.Second) }

func fuzzPreamble() []raftpb.Entry {
	l := newLog()
	return []raftpb.Entry{
		l.cmd(fuzzAt(0), commandtest.Claim("fp", "alice", commandtest.Lease, commandtest.Retention)),
		l.cmd(fuzzAt(1), commandtest.ClaimFor("ns", "done", "")),
		l.cmd(fuzzAt(1), &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
			Namespace: "ns", Key: "done", Token: 2, Response: &statev1.Response{Code: 200, Body: []byte("ok")},
		}}}),
		l.cmd(fuzzAt(2), &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
			Namespace: "ns", Key: "short", Lease: int64(time.Second), Retention: int64(time.Second),
		}}}),
	}
}

// fuzzStore opens a store on a fresh in-memory filesystem with the
// preamble applied.
func fuzzStore(t *testing.T) *Store {
	t.Helper()
	s := openStore(t, vfs.NewMem())
	mustApply(t, s, fuzzPreamble(), nil)
	return s
}

// fuzzEntries makes the fuzzed entries, one per data, from fuzzFirst on.
func fuzzEntries(data ...[]byte) []raftpb.Entry {
	ents := make([]raftpb.Entry, len(data))
	for i, d := range data {
		ents[i] = raftpb.Entry{Term: 2, Index: fuzzFirst + uint64(i), Type: raftpb.EntryNormal, Data: d}
	}
	return ents
}

// checkApplyDeterministic applies ents to two stores at the preamble's
// state, all in one Apply on the first and one entry per Apply on the
// second, and fails unless both end in the same state (checksum, applied
// index, log time) with the same results, the expiry index agrees with the
// records on both, and every result has the shape its entry calls for.
// Apply may refuse an entry only with a clean error (one of the store's
// sentinels), on both stores alike, and then changes nothing. It returns
// the results (nil after a clean error).
func checkApplyDeterministic(t *testing.T, ents []raftpb.Entry) []*statev1.Result {
	t.Helper()
	if len(ents) == 0 {
		return nil
	}
	whole, single := fuzzStore(t), fuzzStore(t)
	before, err := whole.Checksum()
	if err != nil {
		t.Fatalf("Checksum: %v", err)
	}

	resWhole, errWhole := whole.Apply(ents, nil)
	var resSingle []*statev1.Result
	var errSingle error
	for i := range ents {
		res, err := single.Apply(ents[i:i+1], nil)
		if err != nil {
			errSingle = err
			break
		}
		resSingle = append(resSingle, res...)
	}
	if errWhole != nil || errSingle != nil {
		for _, err := range []error{errWhole, errSingle} {
			if err == nil || !(errors.Is(err, ErrCorrupt) || errors.Is(err, ErrClosed) || errors.Is(err, ErrNewerClusterVersion)) {
				t.Fatalf("Apply: %v in one batch, %v entry by entry; want the same clean error from both", errWhole, errSingle)
			}
		}
		if after, _ := whole.Checksum(); after != before || whole.AppliedIndex() != fuzzFirst-1 {
			t.Fatalf("a refused Apply changed the state (applied index %d)", whole.AppliedIndex())
		}
		return nil
	}

	if len(resWhole) != len(ents) || len(resSingle) != len(ents) {
		t.Fatalf("got %d results in one batch and %d entry by entry; want %d", len(resWhole), len(resSingle), len(ents))
	}
	for i := range ents {
		if !proto.Equal(resWhole[i], resSingle[i]) {
			t.Fatalf("entry %d: result %v in one batch, %v entry by entry", ents[i].Index, resWhole[i], resSingle[i])
		}
		checkResultShape(t, ents[i], resWhole[i])
	}
	for _, s := range []*Store{whole, single} {
		if got := s.AppliedIndex(); got != ents[len(ents)-1].Index {
			t.Fatalf("AppliedIndex() = %d; want %d", got, ents[len(ents)-1].Index)
		}
		checkIndex(t, s)
	}
	sumWhole, appWhole, err := whole.ChecksumAt()
	if err != nil {
		t.Fatalf("ChecksumAt: %v", err)
	}
	sumSingle, appSingle, err := single.ChecksumAt()
	if err != nil {
		t.Fatalf("ChecksumAt: %v", err)
	}
	if sumWhole != sumSingle || appWhole != appSingle || whole.LogTime() != single.LogTime() {
		t.Fatalf("state after one batch (%x at %d, log time %d) differs from entry by entry (%x at %d, log time %d)",
			sumWhole, appWhole, whole.LogTime(), sumSingle, appSingle, single.LogTime())
	}
	return resWhole
}

// checkResultShape checks res against what e carries: no result for an
// empty entry or a tick, the invalid-command result for undecodable data,
// one result per proposal (with its request id) for a packed entry.
func checkResultShape(t *testing.T, e raftpb.Entry, res *statev1.Result) {
	t.Helper()
	var env statev1.Entry
	switch {
	case len(e.Data) == 0:
		if res != nil {
			t.Fatalf("entry %d is empty; got result %v", e.Index, res)
		}
	case entry.Decode(e.Data, &env) != nil:
		if res.GetError() != statev1.Error_ERROR_INVALID_COMMAND {
			t.Fatalf("entry %d is undecodable; got result %v, want an invalid command", e.Index, res)
		}
	case len(env.GetProposals()) > 0:
		if len(res.GetPacked()) != len(env.GetProposals()) {
			t.Fatalf("packed entry %d of %d proposals: got %d results", e.Index, len(env.GetProposals()), len(res.GetPacked()))
		}
		for j, p := range env.GetProposals() {
			if got := res.GetPacked()[j].GetRequestId(); got != p.GetRequestId() {
				t.Fatalf("packed entry %d, proposal %d: result for request %d; want %d", e.Index, j, got, p.GetRequestId())
			}
		}
	case len(env.GetCommand()) == 0:
		if res != nil {
			t.Fatalf("entry %d is a tick; got result %v", e.Index, res)
		}
	default:
		if res == nil {
			t.Fatalf("entry %d carries a command; got no result", e.Index)
		}
		if decodeCommand(env.GetCommand()) == nil && res.GetError() != statev1.Error_ERROR_INVALID_COMMAND {
			t.Fatalf("entry %d carries an undecodable command; got result %v, want an invalid command", e.Index, res)
		}
	}
}

// fuzzCommands are commands on the preamble's records, and some that the
// state machine must refuse.
func fuzzCommands() []*statev1.Command {
	resp := &statev1.Response{Code: 201, Metadata: map[string]string{"a": "b"}, Body: []byte("done")}
	return []*statev1.Command{
		commandtest.Complete(1, resp, 0),
		commandtest.Complete(1, resp, int64(time.Hour)),
		commandtest.Heartbeat(1, commandtest.Lease),
		commandtest.Release(1),
		commandtest.Claim("fp", "bob", commandtest.Lease, commandtest.Retention),
		commandtest.Claim("other", "bob", commandtest.Lease, commandtest.Retention),
		commandtest.ClaimFor("ns", "new", ""),
		commandtest.ClaimFor("ns", "done", ""),
		commandtest.ClaimFor("ns", "short", ""),
		{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "ns", Key: "short", Token: 4}}},
		{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: math.MaxInt64, Limit: 10}}},
		{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: fuzzAt(3), Limit: 1}}},
		commandtest.ClaimFor("", "k", ""),
		commandtest.ClaimFor(string(bytes.Repeat([]byte("n"), 256)), "k", ""),
		{},
	}
}

// FuzzApplyEntries: whatever data committed entries carry, Apply does not
// panic, returns a result of the right shape for each entry or a clean
// error, and is deterministic: two stores applying the same entries end in
// the same state with the same results, whether the entries come in one
// batch or one by one.
func FuzzApplyEntries(f *testing.F) {
	cmds := fuzzCommands()
	for i, c := range cmds {
		next := cmds[(i+1)%len(cmds)]
		f.Add(envelope(100+uint64(i), fuzzAt(10+i), c), envelope(200, fuzzAt(20), next), entry.Tick(fuzzAt(3600)))
	}
	pack := func(cs ...*statev1.Command) []byte {
		ps := make([]*entry.Proposal, len(cs))
		for i, c := range cs {
			p := entry.NewProposal(300+uint64(i), mustMarshal(c))
			ps[i] = &p
		}
		b, err := entry.Encode(fuzzAt(30), ps)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(pack(commandtest.Complete(1, nil, 0), commandtest.ClaimFor("ns", "a", "")),
		pack(commandtest.ClaimFor("ns", "b", ""), commandtest.ClaimFor("ns", "c", "")),
		envelope(400, fuzzAt(90_000), cmds[10]))
	f.Add([]byte{0xff, 0xff, 0xff}, []byte(nil), mustMarshal(&statev1.Entry{Time: fuzzAt(40), Command: []byte{0xff, 0xff}}))
	f.Add(entry.Tick(-1), entry.Tick(math.MaxInt64), envelope(0, math.MinInt64, cmds[0]))
	f.Fuzz(func(t *testing.T, e1, e2, e3 []byte) {
		checkApplyDeterministic(t, fuzzEntries(e1, e2, e3))
	})
}

// FuzzApplyCommands is FuzzApplyEntries one level down: the fuzzer writes
// the commands, and the entries around them are well formed (decodeCommand
// and the state machine see every input), either one entry per command or
// one packed entry holding both. Besides determinism it checks that an
// undecodable command is refused, alone or packed, and that nothing lets
// the state machine write a record under a key that does not decode back
// (checkIndex).
func FuzzApplyCommands(f *testing.F) {
	cmds := fuzzCommands()
	for i, c := range cmds {
		f.Add(mustMarshal(c), mustMarshal(cmds[(i+3)%len(cmds)]), uint32(i*1000), uint8(i))
	}
	f.Add([]byte{0xff}, []byte{0x0a, 0x00}, uint32(0), uint8(1))
	f.Fuzz(func(t *testing.T, c1, c2 []byte, dt uint32, shape uint8) {
		at := fuzzAt(3) + int64(dt)*int64(time.Millisecond)
		if cmd := decodeCommand(c1); cmd != nil {
			// decodeCommand must hand back what it was given, give or take
			// encoding: a second decode of its re-encoding is the same.
			again := decodeCommand(mustMarshal(cmd))
			if again == nil || !proto.Equal(cmd, again) {
				t.Fatalf("decodeCommand(%x) = %v; its encoding decodes to %v", c1, cmd, again)
			}
		}
		var data [][]byte
		switch shape % 3 {
		case 0: // one entry each
			data = [][]byte{
				mustMarshal(&statev1.Entry{RequestId: 11, Time: at, Command: c1}),
				mustMarshal(&statev1.Entry{RequestId: 12, Time: at + 1, Command: c2}),
			}
		case 1: // packed together
			data = [][]byte{mustMarshal(&statev1.Entry{Time: at, Proposals: []*statev1.Proposal{
				{RequestId: 11, Command: c1}, {RequestId: 12, Command: c2},
			}})}
		case 2: // packed, then the second alone later
			data = [][]byte{
				mustMarshal(&statev1.Entry{Time: at, Proposals: []*statev1.Proposal{{RequestId: 11, Command: c1}, {RequestId: 12, Command: c2}}}),
				mustMarshal(&statev1.Entry{RequestId: 13, Time: at + int64(time.Hour), Command: c2}),
			}
		}
		res := checkApplyDeterministic(t, fuzzEntries(data...))
		if res == nil || shape%3 == 0 {
			return
		}
		// A packed proposal the state machine cannot decode is refused.
		for j, c := range [][]byte{c1, c2} {
			if decodeCommand(c) == nil && res[0].GetPacked()[j].GetError() != statev1.Error_ERROR_INVALID_COMMAND {
				t.Fatalf("packed proposal %d (%x) is undecodable; got result %v", j, c, res[0].GetPacked()[j])
			}
		}
	})
}

// scriptKeys are the keys a script's commands name: fresh ones and the
// preamble's.
var scriptKeys = []string{"a", "b", "c", "k", "done", "short"}

// maxScriptEntries bounds a script, so that one input stays cheap.
const maxScriptEntries = 64

// entriesFromScript turns fuzz input into a run of well-formed entries
// on the preamble's records, three bytes each: the command (claim,
// complete, heartbeat, release, expire, tick), the key, and a parameter
// that moves time on by 0-7 s and picks the lease, retention, token (the
// index of the key's last claim, or a stale one) and sweep bound. Leases
// and retentions of 1-7 s make records expire, and sweeps find them,
// within a script, so the expiry index is written and swept in every order.
func entriesFromScript(script []byte) []raftpb.Entry {
	lastClaim := map[string]uint64{"k": 1, "done": 2, "short": 4}
	at := fuzzAt(3)
	var data [][]byte
	for len(script) >= 3 && len(data) < maxScriptEntries {
		op, key, p := script[0]%6, scriptKeys[int(script[1])%len(scriptKeys)], script[2]
		script = script[3:]
		index := fuzzFirst + uint64(len(data))
		at += int64(p%8) * int64(time.Second)
		sec := func(n byte) int64 { return int64(n) * int64(time.Second) }
		token := lastClaim[key]
		if p&0x80 != 0 {
			token = uint64(p & 0x0f) // most likely stale
		}
		var cmd *statev1.Command
		switch op {
		case 0:
			cmd = &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
				Namespace: "ns", Key: key, Lease: sec(p%5 + 1), Retention: sec(p%7 + 1), Owner: "o"}}}
			lastClaim[key] = index
		case 1:
			cmd = &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
				Namespace: "ns", Key: key, Token: token, Retention: sec(p % 3), Response: &statev1.Response{Code: int32(p)}}}}
		case 2:
			cmd = &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{
				Namespace: "ns", Key: key, Token: token, Lease: sec(p%5 + 1)}}}
		case 3:
			cmd = &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "ns", Key: key, Token: token}}}
		case 4:
			cmd = &statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: at - sec(p%4), Limit: uint32(p % 3)}}}
		}
		data = append(data, envelope(1000+index, at, cmd))
	}
	return fuzzEntries(data...)
}

// FuzzApplyScript: runs of valid commands (entriesFromScript), claims,
// completions and sweeps interleaved as a busy leader would write them,
// leave the same state and results whether applied in one batch (where
// applyBatch serves reads from its own writes and sweeps scan around
// them) or one entry at a time, with the expiry index matching the
// records.
func FuzzApplyScript(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 1, 2, 4, 0, 7, 4, 0, 3})                      // claims, then sweeps as they expire
	f.Add([]byte{0, 0, 0, 1, 0, 1, 4, 0, 7, 0, 0, 2, 4, 0, 7, 2, 3, 0})    // claim, complete, sweep, claim again
	f.Add([]byte{2, 3, 0, 1, 3, 0, 4, 5, 2, 0, 5, 0, 3, 1, 0x81, 4, 0, 7}) // the preamble's records
	f.Add([]byte{0, 0, 6, 0, 1, 6, 0, 2, 6, 4, 0, 7, 4, 0, 0, 4, 0, 0, 0, 0, 6, 4, 0, 7})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, script []byte) {
		checkApplyDeterministic(t, entriesFromScript(script))
	})
}

// FuzzSplitRecordKey: splitRecordKey never panics, takes every well-formed
// record key (prefix, namespace length, that many bytes, then anything),
// and what it takes encodes back to the same bytes.
func FuzzSplitRecordKey(f *testing.F) {
	f.Add(recordKey("payments", "order-1"))
	f.Add(recordKey("", ""))
	f.Add(recordKey("a", "\x00\xff"))
	f.Add([]byte{prefixRecord, 5, 'a'})
	f.Add(expiryKey(1, "ns", "k"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, k []byte) {
		ns, key, err := splitRecordKey(k)
		wellFormed := len(k) >= 2 && k[0] == prefixRecord && len(k) >= 2+int(k[1])
		if (err == nil) != wellFormed {
			t.Fatalf("splitRecordKey(%x): error %v; want accepted = %v", k, err, wellFormed)
		}
		if err != nil {
			if !errors.Is(err, errBadKey) {
				t.Fatalf("splitRecordKey(%x): error %v; want errBadKey", k, err)
			}
			return
		}
		if got := recordKey(ns, key); !bytes.Equal(got, k) {
			t.Fatalf("splitRecordKey(%x) = (%q, %q), which encodes to %x", k, ns, key, got)
		}
	})
}

// FuzzSplitExpiryKey: splitExpiryKey never panics, takes every well-formed
// expiry index key (prefix, a non-negative time, namespace length, that many
// bytes, then anything), and what it takes encodes back to the same bytes.
func FuzzSplitExpiryKey(f *testing.F) {
	f.Add(expiryKey(fuzzAt(1), "payments", "order-1"))
	f.Add(expiryKey(0, "", ""))
	f.Add(expiryKey(math.MaxInt64, "a", "b"))
	f.Add(append([]byte{prefixExpiry}, bytes.Repeat([]byte{0xff}, 9)...))
	f.Add(recordKey("ns", "k"))
	f.Fuzz(func(t *testing.T, k []byte) {
		at, ns, key, err := splitExpiryKey(k)
		wellFormed := len(k) >= 10 && k[0] == prefixExpiry && binary.BigEndian.Uint64(k[1:9]) <= math.MaxInt64 && len(k) >= 10+int(k[9])
		if (err == nil) != wellFormed {
			t.Fatalf("splitExpiryKey(%x): error %v; want accepted = %v", k, err, wellFormed)
		}
		if err != nil {
			if !errors.Is(err, errBadKey) {
				t.Fatalf("splitExpiryKey(%x): error %v; want errBadKey", k, err)
			}
			return
		}
		if at < 0 {
			t.Fatalf("splitExpiryKey(%x): time %d; want it not negative", k, at)
		}
		if got := expiryKey(at, ns, key); !bytes.Equal(got, k) {
			t.Fatalf("splitExpiryKey(%x) = (%d, %q, %q), which encodes to %x", k, at, ns, key, got)
		}
	})
}

// FuzzKeyRoundTrip: for every namespace the encoding admits (at most
// maxNamespaceLen bytes) and any key and times, record and expiry keys
// decode back to what they encode, stay in their ranges, and expiry keys
// sort by time, with expiryBound(t) separating those at or before t from
// the later ones (what a sweep relies on).
func FuzzKeyRoundTrip(f *testing.F) {
	f.Add("payments", "order-1", fuzzAt(1), fuzzAt(2))
	f.Add("", "", int64(-1), int64(0))
	f.Add("a", "\x00\xff", int64(math.MaxInt64), int64(math.MaxInt64-1))
	f.Add(string(bytes.Repeat([]byte("n"), 255)), "k", int64(math.MinInt64), int64(5))
	f.Fuzz(func(t *testing.T, ns, key string, t1, t2 int64) {
		if len(ns) > maxNamespaceLen {
			return // refused before encoding (Apply, Get)
		}
		rk := recordKey(ns, key)
		if gotNS, gotKey, err := splitRecordKey(rk); err != nil || gotNS != ns || gotKey != key {
			t.Fatalf("splitRecordKey(recordKey(%q, %q)) = (%q, %q, %v)", ns, key, gotNS, gotKey, err)
		}
		if bytes.Compare(rk, stateStart) < 0 || bytes.Compare(rk, stateEnd) >= 0 {
			t.Fatalf("recordKey(%q, %q) = %x is outside the state machine's range", ns, key, rk)
		}
		k1, k2 := expiryKey(t1, ns, key), expiryKey(t2, ns, key)
		for _, c := range []struct {
			at int64
			k  []byte
		}{{t1, k1}, {t2, k2}} {
			gotAt, gotNS, gotKey, err := splitExpiryKey(c.k)
			if err != nil || gotAt != max(c.at, 0) || gotNS != ns || gotKey != key {
				t.Fatalf("splitExpiryKey(expiryKey(%d, %q, %q)) = (%d, %q, %q, %v)", c.at, ns, key, gotAt, gotNS, gotKey, err)
			}
			if bytes.Compare(c.k, expiryStart) < 0 || bytes.Compare(c.k, expiryEnd) >= 0 {
				t.Fatalf("expiryKey(%d, %q, %q) = %x is outside the index's range", c.at, ns, key, c.k)
			}
		}
		if max(t1, 0) < max(t2, 0) && bytes.Compare(k1, k2) >= 0 {
			t.Fatalf("expiryKey(%d) = %x does not sort before expiryKey(%d) = %x", t1, k1, t2, k2)
		}
		if below := bytes.Compare(k1, expiryBound(t2)) < 0; below != (max(t1, 0) <= t2) {
			t.Fatalf("expiryKey(%d, ...) = %x below expiryBound(%d) = %x: %v; want %v", t1, k1, t2, expiryBound(t2), below, max(t1, 0) <= t2)
		}
	})
}

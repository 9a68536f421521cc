package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/keystore-dev/keystore/internal/commandtest"
	"hash/crc32"
	"io"
	"math"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// readSnapshot returns a's state as a snapshot: metadata and the whole
// stream.
func readSnapshot(t *testing.T, a *Store) (raftpb.SnapshotMetadata, []byte) {
	t.Helper()
	md, r, err := a.OpenSnapshot()
	if err != nil {
		t.Fatalf("OpenSnapshot(): %v", err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading the snapshot stream: %v", err)
	}
	return md, data
}

// install stages data for md on b and applies it, as a follower does.
func install(b *Store, md raftpb.SnapshotMetadata, data []byte) error {
	if err := b.ReceiveSnapshot(md, bytes.NewReader(data)); err != nil {
		return err
	}
	return b.ApplySnapshot(raftpb.Snapshot{Metadata: md, Data: streamMagic})
}

// transferSnapshot makes b's state a's, through a snapshot.
func transferSnapshot(t *testing.T, a, b *Store) error {
	t.Helper()
	md, data := readSnapshot(t, a)
	return install(b, md, data)
}

// snapshotSource returns a store with entries 1..10 appended and applied
// (claims at term 2, the last with ConfState {1,2,3}), its snapshot's
// metadata and stream.
func snapshotSource(t *testing.T) (*Store, raftpb.SnapshotMetadata, []byte) {
	t.Helper()
	a := openStore(t, vfs.NewMem())
	ents := claimEntries(t, 1, 11, 2)
	mustAppend(t, a, raftpb.HardState{Term: 2, Vote: 1, Commit: 10}, ents)
	mustApply(t, a, ents, &raftpb.ConfState{Voters: []uint64{1, 2, 3}})
	md, data := readSnapshot(t, a)
	return a, md, data
}

func TestSnapshotMetadata(t *testing.T) {
	a, md, _ := snapshotSource(t)
	if md.Index != a.AppliedIndex() || md.Index != 10 || md.Term != 2 {
		t.Errorf("snapshot metadata index %d term %d; want index %d (AppliedIndex) term 2", md.Index, md.Term, a.AppliedIndex())
	}
	want := raftpb.ConfState{Voters: []uint64{1, 2, 3}}
	if !reflect.DeepEqual(md.ConfState, want) {
		t.Errorf("snapshot ConfState = %v; want %v", md.ConfState, want)
	}
	// raft's Snapshot names the same state, without its data.
	if snap, err := a.Snapshot(); err != nil || !reflect.DeepEqual(snap.Metadata, md) || !bytes.Equal(snap.Data, streamMagic) {
		t.Errorf("Snapshot() = %v, %v; want metadata %v and data %q", snap, err, md, streamMagic)
	}
	// Applying more entries moves the next snapshot along.
	more := claimEntries(t, 11, 13, 3)
	mustAppend(t, a, raftpb.HardState{}, more)
	mustApply(t, a, more, nil)
	snap2, err := a.Snapshot()
	if err != nil || snap2.Metadata.Index != 12 || snap2.Metadata.Term != 3 {
		t.Errorf("Snapshot() after applying 12 = index %d term %d, %v; want index 12 term 3", snap2.Metadata.Index, snap2.Metadata.Term, err)
	}
}

// TestOpenSnapshotIsAConsistentView: a stream opened before more entries
// are applied carries the state it was opened at, whole.
func TestOpenSnapshotIsAConsistentView(t *testing.T) {
	a, _, _ := snapshotSource(t)
	wantSum, _ := a.Checksum()
	md, r, err := a.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	more := claimEntries(t, 11, 13, 3)
	mustAppend(t, a, raftpb.HardState{}, more)
	mustApply(t, a, more, nil)
	data, err := io.ReadAll(r)
	_ = r.Close()
	if err != nil {
		t.Fatal(err)
	}
	b := openStore(t, vfs.NewMem())
	if err := install(b, md, data); err != nil {
		t.Fatalf("install: %v", err)
	}
	if got, _ := b.Checksum(); got != wantSum || b.AppliedIndex() != 10 || md.Index != 10 {
		t.Errorf("installed state at %d (metadata %d) with checksum %x; want 10 and %x", b.AppliedIndex(), md.Index, got, wantSum)
	}
}

func TestApplySnapshot(t *testing.T) {
	a, md, data := snapshotSource(t)
	wantSum, err := a.Checksum()
	if err != nil {
		t.Fatalf("Checksum(): %v", err)
	}
	fs := vfs.NewMem()
	b := openStore(t, fs)
	// b has a log and state of its own, which the snapshot replaces.
	own := claimEntries(t, 1, 4, 1)
	own[0].Data = envelope(1, commandtest.T0, commandtest.ClaimFor("other", "stale", "fp"))
	mustAppend(t, b, raftpb.HardState{Term: 1}, own)
	mustApply(t, b, own, nil)
	if err := install(b, md, data); err != nil {
		t.Fatalf("install: %v", err)
	}
	check := func(t *testing.T, b *Store) {
		t.Helper()
		if got, err := b.Checksum(); err != nil || got != wantSum {
			t.Errorf("Checksum() = %x, %v; want %x (the source's)", got, err, wantSum)
		}
		checkBounds(t, b, 11, 10)
		checkTerm(t, b, 10, 2, nil)
		checkTerm(t, b, 9, 0, raft.ErrCompacted)
		checkTerm(t, b, 11, 0, raft.ErrUnavailable)
		if got, err := b.Entries(10, 11, math.MaxUint64); !errors.Is(err, raft.ErrCompacted) {
			t.Errorf("Entries(10, 11) = %d entries, %v; want ErrCompacted", len(got), err)
		}
		if got := b.AppliedIndex(); got != 10 {
			t.Errorf("AppliedIndex() = %d; want 10", got)
		}
		if got, want := b.LogTime(), a.LogTime(); got != want {
			t.Errorf("LogTime() = %d; want %d", got, want)
		}
		_, cs, _ := b.InitialState()
		if want := md.ConfState; !reflect.DeepEqual(cs, want) {
			t.Errorf("InitialState() ConfState = %v; want %v", cs, want)
		}
		rec, _, err := b.Get("ns", "key-7")
		if err != nil || rec.GetToken() != 7 {
			t.Errorf("Get(ns, key-7) = %v, %v; want token 7", rec, err)
		}
		if _, _, err := b.Get("other", "stale"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(other, stale) error = %v; want ErrNotFound (replaced by the snapshot)", err)
		}
		if names, _ := fs.List(fs.PathJoin("db", snapshotDir)); len(names) != 0 {
			t.Errorf("staging directory holds %v after the install; want nothing", names)
		}
	}
	check(t, b)
	b = reopen(t, b, fs)
	check(t, b)
	// The log goes on after the snapshot.
	next := claimEntries(t, 11, 12, 3)
	mustAppend(t, b, raftpb.HardState{Term: 3, Commit: 11}, next)
	mustApply(t, b, next, nil)
	checkBounds(t, b, 11, 11)
	if got := b.AppliedIndex(); got != 11 {
		t.Errorf("AppliedIndex() after the next entry = %d; want 11", got)
	}
}

// TestApplySnapshotSpansSeveralTables: a state larger than one staged table
// arrives in several, installed together.
func TestApplySnapshotSpansSeveralTables(t *testing.T) {
	a := openStore(t, vfs.NewMem())
	var ents []raftpb.Entry
	for i := uint64(1); i <= 300; i++ {
		ents = append(ents, raftpb.Entry{Index: i, Term: 1, Data: envelope(i, commandtest.T0+int64(i), commandtest.ClaimFor("ns", fmt.Sprintf("key-%04d", i), "fp"))})
	}
	mustAppend(t, a, raftpb.HardState{Term: 1, Commit: 300}, ents)
	mustApply(t, a, ents, nil)
	want, _ := a.Checksum()
	md, data := readSnapshot(t, a)
	b := openStore(t, vfs.NewMem())
	old := snapshotTableBytes
	snapshotTableBytes = 4 << 10
	defer func() { snapshotTableBytes = old }()
	if err := b.ReceiveSnapshot(md, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	paths, err := b.staged(md.Index, md.Term)
	if err != nil || len(paths) < 3 {
		t.Fatalf("staged %d tables, %v; want several", len(paths), err)
	}
	if err := b.ApplySnapshot(raftpb.Snapshot{Metadata: md}); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Checksum(); got != want {
		t.Errorf("checksum after install %x; want %x", got, want)
	}
}

func TestApplySnapshotWakesWatchers(t *testing.T) {
	_, md, data := snapshotSource(t)
	b := openStore(t, vfs.NewMem())
	changed, cancel := b.Watch("ns", "unrelated")
	defer cancel()
	if err := install(b, md, data); err != nil {
		t.Fatalf("install: %v", err)
	}
	select {
	case <-changed:
	default:
		t.Errorf("Watch channel open after ApplySnapshot; want closed")
	}
}

// streamPairs splits a stream into its pairs (and checks its framing).
func streamPairs(t *testing.T, data []byte) [][2][]byte {
	t.Helper()
	var pairs [][2][]byte
	err := decodeStream(bytes.NewReader(data), raftpb.SnapshotMetadata{Index: 10, Term: 2}, func(k, v []byte) error {
		pairs = append(pairs, [2][]byte{append([]byte(nil), k...), append([]byte(nil), v...)})
		return nil
	})
	if err != nil {
		t.Fatalf("decodeStream: %v", err)
	}
	return pairs
}

// buildStream encodes pairs as a well-framed stream with a correct footer,
// so that only what the pairs say can be wrong.
func buildStream(pairs [][2][]byte) []byte {
	b := append([]byte(nil), streamMagic...)
	for _, p := range pairs {
		b = binary.AppendUvarint(b, uint64(len(p[0])))
		b = append(b, p[0]...)
		b = binary.AppendUvarint(b, uint64(len(p[1])))
		b = append(b, p[1]...)
	}
	b = append(b, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(len(pairs)))
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func TestReceiveSnapshotRejectsCorrupt(t *testing.T) {
	_, md, data := snapshotSource(t)
	pairs := streamPairs(t, data)
	if len(pairs) != 21 { // meta + 10 records + their 10 expiry index entries
		t.Fatalf("snapshot has %d pairs; want 21", len(pairs))
	}
	if !bytes.Equal(buildStream(pairs), data) {
		t.Fatalf("buildStream does not reproduce the stream")
	}
	with := func(edit func(ps [][2][]byte) [][2][]byte) []byte {
		ps := append([][2][]byte(nil), pairs...)
		return buildStream(edit(ps))
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	flipped := append([]byte(nil), data...)
	flipped[len(flipped)/2] ^= 0x40
	tests := []struct {
		name string
		data []byte
		md   raftpb.SnapshotMetadata
	}{
		{"empty", nil, md},
		{"bad magic", cat([]byte("KSS1"), data[4:]), md},
		{"magic only", streamMagic, md},
		{"truncated in the magic", data[:2], md},
		{"truncated in the checksum", data[:len(data)-1], md},
		{"truncated before the footer", data[:len(data)-13], md},
		{"truncated inside the first key", data[:len(streamMagic)+2], md},
		{"one byte flipped", flipped, md},
		{"data after the end", cat(data, []byte{0}), md},
		{"raft key in the data", with(func(ps [][2][]byte) [][2][]byte {
			return append(ps, [2][]byte{hardStateKey, nil})
		}), md},
		{"key past the state range", with(func(ps [][2][]byte) [][2][]byte {
			return append(ps, [2][]byte{{0x10, 1}, nil})
		}), md},
		{"keys out of order", with(func(ps [][2][]byte) [][2][]byte {
			ps[3], ps[4] = ps[4], ps[3]
			return ps
		}), md},
		{"a key twice", with(func(ps [][2][]byte) [][2][]byte {
			return append(ps[:5], ps[4:]...)
		}), md},
		{"no meta", with(func(ps [][2][]byte) [][2][]byte { return ps[1:] }), md},
		{"undecodable meta", with(func(ps [][2][]byte) [][2][]byte {
			ps[0] = [2][]byte{metaKey, {0xff, 0xff}}
			return ps
		}), md},
		{"metadata index differs", data, func() raftpb.SnapshotMetadata { m := md; m.Index = 11; return m }()},
		{"metadata term differs", data, func() raftpb.SnapshotMetadata { m := md; m.Term = 1; return m }()},
	}
	fs := vfs.NewMem()
	b := openStore(t, fs)
	own := claimEntries(t, 1, 4, 1)
	mustAppend(t, b, raftpb.HardState{Term: 1, Commit: 3}, own)
	mustApply(t, b, own, &raftpb.ConfState{Voters: []uint64{7}})
	before, err := b.Checksum()
	if err != nil {
		t.Fatalf("Checksum(): %v", err)
	}
	check := func(t *testing.T, b *Store) {
		t.Helper()
		if got, err := b.Checksum(); err != nil || got != before {
			t.Errorf("Checksum() = %x, %v; want %x (unchanged)", got, err, before)
		}
		checkBounds(t, b, 1, 3)
		checkTerm(t, b, 3, 1, nil)
		if got := b.AppliedIndex(); got != 3 {
			t.Errorf("AppliedIndex() = %d; want 3", got)
		}
		if _, cs, _ := b.InitialState(); len(cs.Voters) != 1 || cs.Voters[0] != 7 {
			t.Errorf("InitialState() ConfState = %v; want voters [7]", cs)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := b.ReceiveSnapshot(tt.md, bytes.NewReader(tt.data)); !errors.Is(err, ErrCorrupt) {
				t.Errorf("ReceiveSnapshot error = %v; want ErrCorrupt", err)
			}
			// Nothing was staged, so nothing can be installed.
			if err := b.ApplySnapshot(raftpb.Snapshot{Metadata: tt.md}); err == nil {
				t.Errorf("ApplySnapshot of a refused snapshot succeeded")
			}
			check(t, b)
		})
	}
	b = reopen(t, b, fs)
	check(t, b)
}

// TestReceiveSnapshotRejectsTruncationAtPairBoundary cuts the stream right
// after a pair and ends it there with a well-formed footer: it still
// parses, but records are missing, and the count says so.
func TestReceiveSnapshotRejectsTruncationAtPairBoundary(t *testing.T) {
	_, md, data := snapshotSource(t)
	pairs := streamPairs(t, data)
	for n := 1; n < len(pairs); n++ {
		cut := buildStream(pairs[:n])
		// Keep the full stream's count: the pairs are fewer than it says.
		binary.BigEndian.PutUint64(cut[len(cut)-12:], uint64(len(pairs)))
		binary.BigEndian.PutUint32(cut[len(cut)-4:], crc32.Checksum(cut[:len(cut)-4], castagnoli))
		b := openStore(t, vfs.NewMem())
		if err := b.ReceiveSnapshot(md, bytes.NewReader(cut)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("ReceiveSnapshot(%d of %d pairs) = %v; want ErrCorrupt", n, len(pairs), err)
		}
	}
}

func TestSnapshotStreamHoldsTheState(t *testing.T) {
	a, _, data := snapshotSource(t)
	var keys int
	for _, p := range streamPairs(t, data) {
		k, v := p[0], p[1]
		keys++
		if string(k) == string(metaKey) {
			m := &statev1.Meta{}
			if err := proto.Unmarshal(v, m); err != nil {
				t.Fatal(err)
			}
			if m.AppliedIndex != a.AppliedIndex() {
				t.Errorf("snapshot meta applied index %d; want %d", m.AppliedIndex, a.AppliedIndex())
			}
			continue
		}
		if k[0] == prefixExpiry {
			expires, ns, key, err := splitExpiryKey(k)
			if err != nil {
				t.Fatal(err)
			}
			if rec, _, err := a.Get(ns, key); err != nil || rec.ExpiresAt != expires {
				t.Errorf("snapshot expiry entry %s/%s at %d does not match the record %v (%v)", ns, key, expires, rec, err)
			}
			continue
		}
		ns, key, err := splitRecordKey(k)
		if err != nil {
			t.Fatal(err)
		}
		rec := &statev1.Record{}
		if err := proto.Unmarshal(v, rec); err != nil {
			t.Fatal(err)
		}
		if want, _, err := a.Get(ns, key); err != nil || !proto.Equal(rec, want) {
			t.Errorf("snapshot record %s/%s = %v; want %v (%v)", ns, key, rec, want, err)
		}
	}
	if keys != 21 {
		t.Errorf("stream holds %d keys; want 21", keys)
	}
}

// TestStagedSnapshotsAreDroppedAtOpen: a snapshot received but never
// installed (a crash, or raft ignored it) leaves nothing behind a restart.
func TestStagedSnapshotsAreDroppedAtOpen(t *testing.T) {
	_, md, data := snapshotSource(t)
	fs := vfs.NewMem()
	b := openStore(t, fs)
	if err := b.ReceiveSnapshot(md, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if names, _ := fs.List(fs.PathJoin("db", snapshotDir)); len(names) != 1 {
		t.Fatalf("staging directory holds %v; want one snapshot", names)
	}
	b = reopen(t, b, fs)
	if names, _ := fs.List(fs.PathJoin("db", snapshotDir)); len(names) != 0 {
		t.Errorf("staging directory holds %v after reopening; want nothing", names)
	}
	if b.AppliedIndex() != 0 {
		t.Errorf("AppliedIndex() = %d; want 0 (nothing installed)", b.AppliedIndex())
	}
}

// TestApplySnapshotIsAtomicUnderCrash fails the k-th write of ApplySnapshot
// (file writes, syncs, links, renames, removals: the log's intent, the
// ingest, the log's reset), for every k, then crashes: what survives opens,
// and is the old state or the new, never a mix; a store that reported
// success has the new.
func TestApplySnapshotIsAtomicUnderCrash(t *testing.T) {
	a, md, data := snapshotSource(t)
	newSum, _ := a.Checksum()
	// run applies the snapshot failing the k-th write (none if k < 0) and
	// returns the writes it saw, the state's checksum before and after a
	// crash, the applied index after it, and ApplySnapshot's error.
	run := func(k int32) (writes int32, oldSum, got [32]byte, applied uint64, applyErr error) {
		mem := vfs.NewCrashableMem()
		var armed atomic.Bool
		var count atomic.Int32
		inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
			if armed.Load() && op.Kind.ReadOrWrite() == errorfs.OpIsWrite && count.Add(1)-1 == k {
				return errorfs.ErrInjected
			}
			return nil
		})
		s, err := Open(Config{Dir: "db", FS: errorfs.Wrap(mem, inj)})
		if err != nil {
			t.Fatal(err)
		}
		own := claimEntries(t, 1, 4, 1)
		mustAppend(t, s, raftpb.HardState{Term: 1, Commit: 3}, own)
		mustApply(t, s, own, nil)
		if err := s.db.Flush(); err != nil { // the old state, durable
			t.Fatal(err)
		}
		oldSum, _ = s.Checksum()
		if err := s.ReceiveSnapshot(md, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		armed.Store(true)
		fatal := false
		func() {
			// Pebble treats a failed MANIFEST write as fatal (its
			// Fatalf panics here; keystored exits): the process dies
			// and what is on disk is all that is left.
			defer func() {
				if p := recover(); p != nil {
					fatal, applyErr = true, fmt.Errorf("fatal: %v", p)
				}
			}()
			applyErr = s.ApplySnapshot(raftpb.Snapshot{Metadata: md})
		}()
		crashed := mem.CrashClone(vfs.CrashCloneCfg{})
		armed.Store(false)
		writes = count.Load()
		if !fatal {
			_ = s.Close()
		}
		r, err := Open(Config{Dir: "db", FS: crashed})
		if err != nil {
			t.Fatalf("k=%d: reopening after the crash: %v (ApplySnapshot: %v)", k, err, applyErr)
		}
		defer r.Close()
		got, _ = r.Checksum()
		return writes, oldSum, got, r.AppliedIndex(), applyErr
	}
	total, _, got, _, applyErr := run(-1)
	if applyErr != nil || got != newSum {
		t.Fatalf("without failures: ApplySnapshot = %v, state new = %v", applyErr, got == newSum)
	}
	failed := 0
	for k := range total {
		_, oldSum, got, applied, applyErr := run(k)
		switch {
		case got == newSum && applied == md.Index:
		case got == oldSum && applyErr != nil:
		default:
			t.Errorf("k=%d: state after the crash is neither the old nor the new (applied %d; ApplySnapshot: %v)", k, applied, applyErr)
		}
		if applyErr != nil {
			failed++
		}
	}
	if failed == 0 {
		t.Errorf("none of %d injected write failures failed ApplySnapshot; the test injects nothing", total)
	}
	t.Logf("%d writes; %d injected failures failed ApplySnapshot", total, failed)
}

package storage

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/entry"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"go.etcd.io/raft/v3/raftpb"
)

func readFormatFile(t *testing.T, fs vfs.FS) string {
	t.Helper()
	f, err := fs.Open("db/" + formatFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	return string(b)
}

// TestClusterVersionThroughTheLog: a store starts at cluster version 1
// (format 1, which a binary from before cluster versions still opens); a
// SetClusterVersion entry raises it in the apply batch, with the format
// file raised to 2 first; a lower one never lowers it; it survives a
// reopen, is part of the checksum, and travels in snapshots.
func TestClusterVersionThroughTheLog(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	if got := s.ClusterVersion(); got != 1 {
		t.Fatalf("ClusterVersion of a new store = %d; want 1", got)
	}
	ents := logEntries(1, 4, constTerm(1))
	mustApply(t, s, ents, nil)
	if got := readFormatFile(t, fs); got != "keystore-storage-format 1\n" {
		t.Fatalf("format file at cluster version 1: %q; want format 1", got)
	}
	before, err := s.Checksum()
	if err != nil {
		t.Fatal(err)
	}
	res := mustApply(t, s, []raftpb.Entry{{Index: 4, Term: 1, Type: raftpb.EntryNormal, Data: entry.SetClusterVersion(fuzzAt(5), 2)}}, nil)
	if res[0] != nil {
		t.Fatalf("result of SetClusterVersion: %v; want none", res[0])
	}
	if got := s.ClusterVersion(); got != 2 {
		t.Fatalf("ClusterVersion after SetClusterVersion(2) = %d; want 2", got)
	}
	if got := readFormatFile(t, fs); got != "keystore-storage-format 2\n" {
		t.Fatalf("format file at cluster version 2: %q; want format 2", got)
	}
	after, _ := s.Checksum()
	if after == before {
		t.Fatal("the checksum does not cover the cluster version")
	}
	// Never lowered (a stale rise applied late).
	mustApply(t, s, []raftpb.Entry{{Index: 5, Term: 1, Type: raftpb.EntryNormal, Data: entry.SetClusterVersion(fuzzAt(6), 1)}}, nil)
	if got := s.ClusterVersion(); got != 2 {
		t.Fatalf("ClusterVersion after SetClusterVersion(1) = %d; want still 2", got)
	}
	s = reopen(t, s, fs)
	if got := s.ClusterVersion(); got != 2 {
		t.Fatalf("ClusterVersion after reopen = %d; want 2", got)
	}

	// A snapshot carries it, and installing it raises the format.
	fs2 := vfs.NewMem()
	b := openStore(t, fs2)
	if err := transferSnapshot(t, s, b); err != nil {
		t.Fatal(err)
	}
	if got := b.ClusterVersion(); got != 2 {
		t.Fatalf("ClusterVersion after installing a snapshot = %d; want 2", got)
	}
	if got := readFormatFile(t, fs2); got != "keystore-storage-format 2\n" {
		t.Fatalf("format file after installing a cluster version 2 snapshot: %q; want format 2", got)
	}
}

// TestApplyRefusesANewerClusterVersion: an entry that needs a cluster
// version above this binary's (its version, or the version it sets) is
// neither applied nor skipped: Apply fails with ErrNewerClusterVersion
// naming the versions, and nothing of the batch is written.
func TestApplyRefusesANewerClusterVersion(t *testing.T) {
	next := entry.ClusterVersion + 1
	for name, data := range map[string][]byte{
		"sets":  entry.SetClusterVersion(fuzzAt(5), next),
		"needs": mustMarshal(&statev1.Entry{Time: fuzzAt(5), Version: next, Command: []byte{0x32, 0}}),
	} {
		t.Run(name, func(t *testing.T) {
			s := openStore(t, vfs.NewMem())
			mustApply(t, s, logEntries(1, 3, constTerm(1)), nil)
			before, _ := s.Checksum()
			ents := append(logEntries(3, 5, constTerm(1)), raftpb.Entry{Index: 5, Term: 1, Type: raftpb.EntryNormal, Data: data})
			if err := s.Append(raftpb.HardState{}, ents, true); err != nil {
				t.Fatal(err)
			}
			_, err := s.Apply(ents, nil)
			var ue *entry.UnsupportedError
			if !errors.Is(err, ErrNewerClusterVersion) || !errors.As(err, &ue) || ue.Need != next ||
				!strings.Contains(err.Error(), "entry 5") || !strings.Contains(err.Error(), "up to 2") {
				t.Fatalf("Apply of an entry needing cluster version %d: %v; want ErrNewerClusterVersion naming entry 5 and both versions", next, err)
			}
			if after, _ := s.Checksum(); after != before || s.AppliedIndex() != 2 {
				t.Fatalf("a refused Apply wrote something (applied index %d)", s.AppliedIndex())
			}
		})
	}
}

// TestOpenRefusesANewerClusterVersion is downgrade protection: a data dir
// whose state records a cluster version above this binary's is refused at
// Open with a message naming both versions, and a snapshot of one is never
// staged.
func TestOpenRefusesANewerClusterVersion(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs)
	mustApply(t, s, logEntries(1, 3, constTerm(1)), nil)
	// As a newer binary would leave it.
	s.mu.Lock()
	s.meta.ClusterVersion = entry.ClusterVersion + 1
	meta := mustMarshal(s.meta)
	s.mu.Unlock()
	if err := s.db.Set(metaKey, meta, nil); err != nil {
		t.Fatal(err)
	}
	md, data := readSnapshot(t, s)
	if err := install(openStore(t, vfs.NewMem()), md, data); !errors.Is(err, ErrNewerClusterVersion) {
		t.Fatalf("installing a snapshot at cluster version %d: %v; want ErrNewerClusterVersion", entry.ClusterVersion+1, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{Dir: "db", FS: fs})
	if !errors.Is(err, ErrNewerClusterVersion) || !strings.Contains(err.Error(), "cluster version 3") || !strings.Contains(err.Error(), "up to 2") {
		t.Fatalf("Open of a data dir at cluster version 3: %v; want ErrNewerClusterVersion naming both versions", err)
	}
}

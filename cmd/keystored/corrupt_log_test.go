package main

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keystore-dev/keystore/storage"
	"go.etcd.io/raft/v3/raftpb"
)

// TestCorruptRaftLogStopsKeystored: keystored refuses to start on a raft
// log damaged in the middle, and its error says which file, where, and
// that the node must be replaced (the data directory given relative, the
// file named in full).
func TestCorruptRaftLogStopsKeystored(t *testing.T) {
	t.Chdir(t.TempDir())
	s, err := storage.Open(storage.Config{Dir: filepath.Join("data", "db")})
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 20; i += 5 {
		var ents []raftpb.Entry
		for j := i; j < i+5; j++ {
			ents = append(ents, raftpb.Entry{Index: j, Term: 1, Data: []byte("an entry of the raft log")})
		}
		if err := s.Append(raftpb.HardState{Term: 1, Vote: 1, Commit: i + 4}, ents, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join("data", "db", "raftlog", "*.wal"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("raft log segments: %v, %v", segs, err)
	}
	var seg string
	var data []byte
	for _, name := range segs { // the one holding the entries
		if b, err := os.ReadFile(name); err == nil && len(b) > len(data) {
			seg, data = name, b
		}
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(seg, data, 0o644); err != nil {
		t.Fatal(err)
	}

	runErr := run([]string{"--data-dir", "data", "--client-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0", "--log-level", "error"})
	if !errors.Is(runErr, storage.ErrCorrupt) {
		t.Fatalf("run = %v; want ErrCorrupt", runErr)
	}
	abs, err := filepath.Abs(seg)
	if err != nil {
		t.Fatal(err)
	}
	dataDir, err := filepath.Abs("data")
	if err != nil {
		t.Fatal(err)
	}
	msg := runErr.Error()
	if !strings.Contains(msg, abs) || !regexp.MustCompile(`offset \d+`).MatchString(msg) ||
		!strings.Contains(msg, "replace the node") || !strings.Contains(msg, "wipe its data directory") ||
		!strings.Contains(msg, "the data directory is "+dataDir) {
		t.Errorf("keystored says %q; want the file (%s), the offset, that the node must be replaced and its data directory (%s)", msg, abs, dataDir)
	}
}

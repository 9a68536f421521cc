package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/backup"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// backupFile saves a backup of a one-node cluster holding a completed
// record into dir and returns its path.
func backupFile(t *testing.T, dir string) string {
	t.Helper()
	tc := testcluster.Start(t, testcluster.Options{Size: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv := tc.Client("n1")
	cl, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "ns", Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Complete(ctx, &keystorev1.CompleteRequest{Namespace: "ns", Key: "k", Token: cl.GetToken(), Response: &keystorev1.Response{Code: 200}}); err != nil {
		t.Fatal(err)
	}
	stream, err := keystorev1.NewClusterServiceClient(tc.Conn("n1")).Backup(ctx, &keystorev1.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "b.backup")
	if _, err := backup.SaveFile(path, func(w io.Writer) error {
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if _, err := w.Write(msg.GetData()); err != nil {
				return err
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRestore: keystored restore makes a data dir from a backup (flags
// before or after the file, or from the environment), and refuses a
// non-empty data dir and a damaged file, changing nothing.
func TestRestore(t *testing.T) {
	dir := t.TempDir()
	file := backupFile(t, dir)

	// A non-empty data dir is refused and left as it was.
	busy := filepath.Join(dir, "busy")
	if err := os.MkdirAll(busy, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(busy, "keep"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := runRestore([]string{"--data-dir", busy, file}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("restore into a non-empty dir: %v; want refused", err)
	}
	if names, _ := os.ReadDir(busy); len(names) != 1 {
		t.Fatalf("the refused restore changed the dir: %v", names)
	}

	// A damaged file is refused, and the data dir not created.
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-trailerByte] ^= 0xff
	damaged := filepath.Join(dir, "damaged.backup")
	if err := os.WriteFile(damaged, b, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "fresh")
	err = runRestore([]string{damaged, "--data-dir", fresh}, io.Discard, io.Discard)
	if !errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("restore of a damaged file: %v; want backup.ErrCorrupt", err)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Fatalf("a refused restore left %s (%v)", fresh, err)
	}
	if err := runRestore([]string{filepath.Join(dir, "missing"), "--data-dir", fresh}, io.Discard, io.Discard); err == nil {
		t.Fatal("restore of a missing file succeeded")
	}

	// Restored: the name from the environment, the data dir after the
	// file; an empty existing dir will do.
	if err := os.Mkdir(fresh, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYSTORE_NAME", "restored-1")
	var out bytes.Buffer
	if err := runRestore([]string{file, "--data-dir", fresh}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"restored-1"`) || !strings.Contains(out.String(), "1 records") {
		t.Fatalf("output:\n%s\nwant the name and the record count", out.String())
	}
	id, err := os.ReadFile(filepath.Join(fresh, "identity.json"))
	if err != nil || !strings.Contains(string(id), `"restored-1"`) {
		t.Fatalf("identity.json: %s (%v)", id, err)
	}
	names, _ := os.ReadDir(fresh)
	if len(names) != 2 {
		t.Fatalf("the data dir holds %v; want db and identity.json only", names)
	}
	if err := runRestore([]string{file, "--data-dir", fresh}, io.Discard, io.Discard); err == nil {
		t.Fatal("a second restore into the restored dir succeeded")
	}
	if err := run([]string{"restore", "--data-dir", filepath.Join(dir, "x")}); err == nil {
		t.Fatal("restore without a file succeeded")
	}

	// The node's own --config file: restore takes the data dir from it
	// and ignores the keys of a running node.
	conf := filepath.Join(dir, "node.yaml")
	fromFile := filepath.Join(dir, "from-file")
	if err := os.WriteFile(conf, []byte("data-dir: "+fromFile+"\nclient-addr: 127.0.0.1:7001\nmetrics-addr: 127.0.0.1:9101\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := runRestore([]string{"--config", conf, file}, io.Discard, io.Discard); err != nil {
		t.Fatalf("restore with the node's config file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(fromFile, "identity.json")); err != nil {
		t.Fatalf("restore did not use the config file's data dir: %v", err)
	}
}

// trailerByte is a byte of the SHA-256 in the trailer, from the end.
const trailerByte = 5

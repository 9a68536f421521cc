package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keystore-dev/keystore/internal/testcluster"
)

// TestSnapshotSaveAndStatus: snapshot save writes a verified backup from a
// running cluster (never a .part left behind), snapshot status reads it
// back, and a damaged or missing file exits 1.
func TestSnapshotSaveAndStatus(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	eps := "--endpoints=" + strings.Join(tc.Endpoints(), ",")
	for i := range 5 {
		key := []string{eps, "--namespace", "payments", "--key", "order-" + strconv.Itoa(i)}
		f := textFields(t, mustCLI(t, append([]string{"claim"}, key...)...))
		mustCLI(t, append([]string{"complete", "--token", f["token"], "--body", "ok"}, key...)...)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "keystore.backup")

	// Through a follower alone: any node serves a backup.
	follower := "--endpoints=" + tc.Endpoint(tc.Follower())
	saved := textFields(t, mustCLI(t, "snapshot", "save", file, follower))
	if saved["saved"] != file || saved["endpoint"] != tc.Endpoint(tc.Follower()) || saved["linearizable"] != "true" || saved["records"] != "5" {
		t.Fatalf("snapshot save: %v", saved)
	}
	if _, err := os.Stat(file + ".part"); !os.IsNotExist(err) {
		t.Fatalf("%s.part left behind: %v", file, err)
	}
	index := saved["index"]
	if n, err := strconv.ParseUint(index, 10, 64); err != nil || n == 0 {
		t.Fatalf("index %q", index)
	}

	st := textFields(t, mustCLI(t, "snapshot", "status", file))
	if st["index"] != index || st["records"] != "5" || !strings.HasPrefix(st["verified"], "true") || st["term"] != saved["term"] {
		t.Fatalf("snapshot status: %v; want index %s and 5 records, verified", st, index)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	js := jsonOne(t, mustCLI(t, "snapshot", "status", file, "-o", "json"))
	if js["index"] != float64(mustUint(t, index)) || js["size"] != float64(fi.Size()) || js["verified"] != true {
		t.Fatalf("snapshot status -o json: %v", js)
	}
	if len(js["members"].([]any)) != 3 {
		t.Fatalf("members %v; want the three of the cluster", js["members"])
	}

	// A stale backup through any endpoint, as JSON.
	stale := jsonOne(t, mustCLI(t, "snapshot", "save", filepath.Join(dir, "stale.backup"), eps, "--stale", "-o", "json"))
	if stale["linearizable"] != false || stale["verified"] != true {
		t.Fatalf("snapshot save --stale: %v", stale)
	}

	// Damaged: a flipped byte, a truncated copy, not a backup at all.
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	flipped := filepath.Join(dir, "flipped")
	b[len(b)/2] ^= 1
	if err := os.WriteFile(flipped, b, 0o600); err != nil {
		t.Fatal(err)
	}
	wantExit1(t, "damaged", "snapshot", "status", flipped)
	b[len(b)/2] ^= 1
	truncated := filepath.Join(dir, "truncated")
	if err := os.WriteFile(truncated, b[:len(b)-1], 0o600); err != nil {
		t.Fatal(err)
	}
	wantExit1(t, "damaged", "snapshot", "status", truncated)
	wantExit1(t, "no such file", "snapshot", "status", filepath.Join(dir, "missing"))
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, []byte("not a backup, but long enough to read a header from"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantExit1(t, "not a keystore backup", "snapshot", "status", other)
	if code, _, errOut := cli(t, "snapshot", "save"); code != exitUsage || !strings.Contains(errOut, "FILE is required") {
		t.Fatalf("snapshot save without FILE: exit %d, %q; want exit 2, FILE is required", code, errOut)
	}
}

func mustUint(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

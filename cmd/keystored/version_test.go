package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestVersionFlag: --version prints and exits without starting a node (no
// data dir is made).
func TestVersionFlag(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := run([]string{"--version", "--data-dir", dir}); err != nil {
		t.Fatalf("run --version: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("--version made the data dir (%v); want nothing started", err)
	}
}

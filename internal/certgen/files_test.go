package certgen

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// mode returns the permission bits of the file at path.
func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestWriteFiles(t *testing.T) {
	ca := mustNewCA(t, "test CA")
	leaf, err := ca.Issue(IssueOptions{CommonName: "n1", Server: true, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "certs")
	// An existing, world-readable file must end up 0600 all the same.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "n1.key"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}

	certPath, keyPath, err := WriteFiles(dir, "n1", leaf)
	if err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	files := []struct {
		path string
		want []byte
	}{{certPath, leaf.CertPEM}, {keyPath, leaf.KeyPEM}}
	for _, f := range files {
		got, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, f.want) {
			t.Errorf("%s holds %q; want %q", f.path, got, f.want)
		}
		if m := mode(t, f.path); m != 0o600 {
			t.Errorf("%s has mode %v; want 0600", f.path, m)
		}
	}
	if certPath != filepath.Join(dir, "n1.crt") || keyPath != filepath.Join(dir, "n1.key") {
		t.Errorf("paths %s, %s; want n1.crt, n1.key in %s", certPath, keyPath, dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("%s holds %d entries; want 2 (no temporary files left)", dir, len(entries))
	}
}

func TestWriteFilesCreatesPrivateDir(t *testing.T) {
	ca := mustNewCA(t, "test CA")
	leaf, err := ca.Issue(IssueOptions{CommonName: "admin", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "a", "b")
	if _, _, err := WriteFiles(dir, "client-admin", leaf); err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("%s has mode %v; want 0700", dir, m)
	}
}

func TestWriteFilesBadName(t *testing.T) {
	ca := mustNewCA(t, "test CA")
	leaf, err := ca.Issue(IssueOptions{CommonName: "n1", Server: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", ".", "..", ".hidden", "a/b", "../n1", `a\b`} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if _, _, err := WriteFiles(dir, name, leaf); !errors.Is(err, ErrBadName) {
				t.Errorf("WriteFiles(%q): got %v; want ErrBadName", name, err)
			}
		})
	}
}

func TestCAWriteFile(t *testing.T) {
	ca := mustNewCA(t, "test CA")
	path := filepath.Join(t.TempDir(), "ca.crt")
	if err := ca.WriteFile(path); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ca.CertPEM) {
		t.Errorf("%s does not hold the CA certificate", path)
	}
	if m := mode(t, path); m != 0o644 {
		t.Errorf("%s has mode %v; want 0644", path, m)
	}
}

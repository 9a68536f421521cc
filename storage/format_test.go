package storage

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestFormatVersion: a store records its format at Open; a store of a
// newer format is refused with a message saying what to do, a damaged
// record is corruption, and a store from before formats were recorded is
// read as format 1 and gets its record.
func TestFormatVersion(t *testing.T) {
	fs := vfs.NewMem()
	read := func() string {
		t.Helper()
		f, err := fs.Open("db/" + formatFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		return string(b)
	}
	write := func(s string) {
		t.Helper()
		f, err := fs.Create("db/"+formatFile, vfs.WriteCategoryUnspecified)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = f.Write([]byte(s))
		_ = f.Close()
	}
	s := openStore(t, fs)
	_ = s.Close()
	if got := read(); got != "keystore-storage-format 1\n" {
		t.Fatalf("format file of a new store: %q", got)
	}

	write("keystore-storage-format 3\n")
	_, err := Open(Config{Dir: "db", FS: fs})
	if !errors.Is(err, ErrNewerFormat) || !strings.Contains(err.Error(), "format 3") || !strings.Contains(err.Error(), "up to 2") {
		t.Fatalf("Open of a format-3 store: %v; want ErrNewerFormat naming both formats", err)
	}

	write("garbage")
	if _, err := Open(Config{Dir: "db", FS: fs}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with a damaged format file: %v; want ErrCorrupt", err)
	}

	if err := fs.Remove("db/" + formatFile); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, fs)
	_ = s.Close()
	if got := read(); got != "keystore-storage-format 1\n" {
		t.Fatalf("format file after opening a store that had none: %q", got)
	}
}

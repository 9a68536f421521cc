package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/entry"
)

// FormatVersion is the newest on-disk format this version reads and
// writes. A store records its format in formatFile beside the database;
// Open refuses a newer one, so that a binary rolled back past a format
// change stops with a clear message instead of misreading the data. Raise
// it with any change an older binary would misread, and teach Open to read
// (or convert) every older one.
//
//	1: Pebble state (records, expiry index, meta) and the chained raft log.
//	2: format 1 with a cluster version of 2 or more applied (meta
//	   cluster_version; the log may hold entries a binary from before
//	   cluster versions would misapply, see package entry). A store is
//	   raised to 2 when it applies or installs cluster version 2, before
//	   the batch that records it, never earlier: until the cluster version
//	   rises, a binary of format 1 may still take the data dir over (a
//	   rollback in the middle of a rolling upgrade), and after, it refuses
//	   it. Binaries of format 2 check the cluster version itself at Open.
const FormatVersion = 2

// formatFor is the format a store at cluster version cv must record.
func formatFor(cv uint32) int {
	if entry.EffectiveVersion(cv) >= 2 {
		return 2
	}
	return 1
}

// formatFile holds "keystore-storage-format N" in the store's directory.
const formatFile = "KEYSTORE_FORMAT"

const formatPrefix = "keystore-storage-format "

// ErrNewerFormat is returned by Open for a store written by a newer
// keystore.
var ErrNewerFormat = errors.New("storage: the data dir was written by a newer keystore")

// checkFormat reads dir's format: 0 when the store has none yet (a new
// one, or one written before formats were recorded, which is format 1),
// ErrNewerFormat for a newer one than this binary reads.
func checkFormat(fs vfs.FS, dir string) (int, error) {
	f, err := fs.Open(fs.PathJoin(dir, formatFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("storage: %s: %w", formatFile, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 256))
	if err != nil {
		return 0, fmt.Errorf("storage: %s: %w", formatFile, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(b), formatPrefix)))
	if !strings.HasPrefix(string(b), formatPrefix) || err != nil || v < 1 {
		return 0, fmt.Errorf("%w: %s holds %q", ErrCorrupt, formatFile, b)
	}
	if v > FormatVersion {
		return v, fmt.Errorf("%w (format %d; this binary reads formats up to %d): run the newer keystored, or restore a backup taken by this version into an empty data dir", ErrNewerFormat, v, FormatVersion)
	}
	return v, nil
}

// writeFormat records format v in dir durably.
func writeFormat(fs vfs.FS, dir string, v int) error {
	return WriteFileDurably(fs, dir, formatFile, fmt.Appendf(nil, "%s%d\n", formatPrefix, v))
}

// raiseFormat records the format a store at cluster version cv needs, if
// the recorded one is older (applyMu held, or Open).
func (s *Store) raiseFormat(cv uint32) error {
	want := formatFor(cv)
	if s.format >= want {
		return nil
	}
	if err := writeFormat(s.fs, s.dir, want); err != nil {
		return fmt.Errorf("storage: recording format %d: %w", want, err)
	}
	s.logger.Info("recorded the on-disk format", "format", want, "cluster_version", entry.EffectiveVersion(cv))
	s.format = want
	return nil
}

// WriteFileDurably writes a small file name in dir so that a crash leaves
// the old content or the new, never a torn one: a temporary file, synced,
// renamed over name, and the directory synced. dir is made (0700) if
// missing.
func WriteFileDurably(fs vfs.FS, dir, name string, data []byte) error {
	if err := fs.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp := fs.PathJoin(dir, name+".tmp")
	f, err := fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fs.Rename(tmp, fs.PathJoin(dir, name)); err != nil {
		return err
	}
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

package backup

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Summary is what a whole read of a backup found.
type Summary struct {
	Header Header
	// FormatVersion is the file's format version.
	FormatVersion uint32
	// Size is the file's length in bytes; PayloadBytes its payload's.
	Size         int64
	PayloadBytes uint64
}

// Verify reads a whole backup from r and checks it: magic, version,
// header, length and SHA-256. It does not decode the payload (keystored
// restore checks its framing, order and CRC as well).
func Verify(r io.Reader) (Summary, error) {
	br, err := NewReader(r)
	if err != nil {
		return Summary{}, err
	}
	buf := make([]byte, readChunk)
	for {
		_, err := br.Read(buf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Summary{Header: br.Header(), Size: br.Size()}, err
		}
	}
	return Summary{Header: br.Header(), FormatVersion: br.version, Size: br.Size(), PayloadBytes: br.PayloadBytes()}, nil
}

// VerifyFile is Verify of the file at path.
func VerifyFile(path string) (Summary, error) {
	f, err := os.Open(path)
	if err != nil {
		return Summary{}, err
	}
	defer f.Close()
	return Verify(f)
}

// PartSuffix is what SaveFile appends to the name of the file it writes
// before the file is whole and checked.
const PartSuffix = ".part"

// SaveFile writes a backup to path, as etcdctl snapshot save does: fill
// writes the file's bytes into path+".part" (created private to this
// user), which is synced, read back and verified, and only then renamed to
// path (replacing any file there) and the directory synced. On any failure
// the .part file is removed and path is left as it was: path never holds a
// truncated or unchecked backup.
func SaveFile(path string, fill func(w io.Writer) error) (Summary, error) {
	part := path + PartSuffix
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return Summary{}, err
	}
	done := false
	defer func() {
		if !done {
			_ = f.Close()
			_ = os.Remove(part)
		}
	}()
	if err := fill(f); err != nil {
		return Summary{}, err
	}
	if err := f.Sync(); err != nil {
		return Summary{}, fmt.Errorf("backup: sync %s: %w", part, err)
	}
	// Read back what the disk holds, not what was sent.
	rf, err := os.Open(part)
	if err != nil {
		return Summary{}, err
	}
	sum, err := Verify(rf)
	_ = rf.Close()
	if err != nil {
		return sum, fmt.Errorf("backup: the file written does not verify: %w", err)
	}
	if err := f.Close(); err != nil {
		return sum, err
	}
	if err := os.Rename(part, path); err != nil {
		return sum, err
	}
	done = true
	if err := syncDir(filepath.Dir(path)); err != nil {
		return sum, fmt.Errorf("backup: sync directory of %s: %w", path, err)
	}
	return sum, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

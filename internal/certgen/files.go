package certgen

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrBadName is returned by WriteFiles for a name that is not a plain file
// name (empty, ".", "..", a leading dot, or a path separator).
var ErrBadName = errors.New("certgen: bad file name")

// WriteFiles writes leaf to dir/name.crt and dir/name.key, both with mode
// 0600, creating dir with mode 0700 if it is missing. Each file is written
// to a temporary file and renamed into place, so a reader (such as a
// tlsconf.Source watching the files) sees either the old or the new content
// of each file, never a partial one.
func WriteFiles(dir, name string, leaf *Leaf) (certPath, keyPath string, err error) {
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") || strings.ContainsAny(name, `/\`) {
		return "", "", fmt.Errorf("%w: %q", ErrBadName, name)
	}
	if leaf == nil {
		return "", "", errors.New("certgen: write a nil leaf")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("certgen: %w", err)
	}
	certPath = filepath.Join(dir, name+".crt")
	keyPath = filepath.Join(dir, name+".key")
	if err := writeFileAtomic(certPath, leaf.CertPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(keyPath, leaf.KeyPEM, 0o600); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// WriteFile writes the CA's certificate (never its key) to path with mode
// 0644, creating the parent directory with mode 0700 if it is missing.
func (ca *CA) WriteFile(path string) error {
	if ca == nil || len(ca.CertPEM) == 0 {
		return errors.New("certgen: write an incomplete CA")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	return writeFileAtomic(path, ca.CertPEM, 0o644)
}

// writeFileAtomic writes data to a temporary file beside path, sets its mode
// to perm (whatever the umask, and whatever mode an existing file at path
// had), syncs it and renames it over path.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	// NB: os.CreateTemp makes the file with mode 0600, so a key is never
	// readable by others, not even between creation and Chmod.
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("certgen: %w", err)
	}
	return nil
}

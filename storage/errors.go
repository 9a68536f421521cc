package storage

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/keystore-dev/keystore/entry"
	"github.com/keystore-dev/keystore/rules"
)

// Errors returned by the store (the contract's refusals of a command are
// rules' errors); the API maps them to gRPC codes in one place.
var (
	// ErrNotFound is returned when a record is absent or expired; it is
	// rules.ErrNotFound, so that the API need not import the store.
	ErrNotFound = rules.ErrNotFound
	// ErrCorrupt is returned when stored bytes cannot be decoded, or when
	// the Raft log is damaged or does not match the state machine (then
	// the error says where and what to do: see logCorruptError).
	ErrCorrupt = errors.New("storage: corrupt data")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("storage: closed")
	// ErrNewerClusterVersion is returned by Apply for an entry, by
	// ReceiveSnapshot for a snapshot, and by Open for a data dir that
	// needs a cluster version above what this binary supports (written
	// by a newer keystore): nothing of it is applied; the error wraps an
	// *entry.UnsupportedError naming the versions.
	ErrNewerClusterVersion = errors.New("storage: written by a newer keystore")
)

// checkClusterVersion returns ErrNewerClusterVersion (naming what and the
// versions) if need is above what this binary supports.
func checkClusterVersion(what string, need uint32) error {
	if err := entry.CheckSupported(what, need); err != nil {
		return fmt.Errorf("%w: %w", ErrNewerClusterVersion, err)
	}
	return nil
}

// logCorruptError is damage found in the Raft log, or a log that cannot be
// the one the state machine was applied from: where it is, what it is, and
// what the operator must do. It wraps ErrCorrupt.
type logCorruptError struct {
	path string // a segment file, or the log's directory
	off  int64  // a byte offset in path, or -1
	what string
}

// replaceNode is what an operator must do about a log that cannot be
// trusted. A node that forgot entries or votes it acknowledged can break
// the guarantees of the whole cluster, so the log must not be patched up.
const replaceNode = "this node's raft log cannot be trusted and must not be repaired in place " +
	"(editing, truncating or deleting its files would make the node forget entries or votes it acknowledged); " +
	"replace the node: remove it from the cluster, wipe its data directory, " +
	"and add it back as a new member, which copies the state from the others"

func (e *logCorruptError) Error() string {
	where := "raft log " + e.path
	if e.off >= 0 {
		where = fmt.Sprintf("raft log file %s, offset %d", e.path, e.off)
	}
	return fmt.Sprintf("%v: %s: %s; %s", ErrCorrupt, where, e.what, replaceNode)
}

func (e *logCorruptError) Unwrap() error { return ErrCorrupt }

// corruptAt reports damage at offset off of the log file path.
func corruptAt(path string, off int64, format string, args ...any) error {
	return &logCorruptError{path: path, off: off, what: fmt.Sprintf(format, args...)}
}

// corruptLog reports a log (its directory) that does not add up.
func corruptLog(dir string, format string, args ...any) error {
	return &logCorruptError{path: dir, off: -1, what: fmt.Sprintf(format, args...)}
}

// keyDigest names a stored key in an error or log line without showing it
// (record keys hold callers' idempotency keys, which may carry customer
// data): its kind byte, length and a short SHA-256.
func keyDigest(k []byte) string {
	if len(k) == 0 {
		return "(empty)"
	}
	sum := sha256.Sum256(k)
	return fmt.Sprintf("kind %#x, %d bytes, sha256 %x", k[0], len(k), sum[:6])
}

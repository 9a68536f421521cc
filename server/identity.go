package server

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/storage"
)

// identity is who a node is, created once and kept in its data dir: the
// Raft id it votes and is known under, the cluster it belongs to, and its
// name. NB: an id is never reused: a node whose data is lost joins again
// under a new id (a new identity in an empty data dir), because the old id
// carries votes and acknowledgements the new node never made.
type identity struct {
	NodeID    uint64 `json:"node_id,string"`
	ClusterID uint64 `json:"cluster_id,string"`
	Name      string `json:"name"`
	// Joining is set from when a node chose its id to join a cluster until
	// the cluster added it: asking again after a crash adds the same id.
	Joining bool `json:"joining,omitempty"`
	// Joined is set for a node that joined a cluster rather than
	// bootstrapped it: with no state it waits to be sent the log.
	Joined bool `json:"joined,omitempty"`
	// Expecting is set while a node started with --bootstrap-expect waits
	// for the others (its cluster id is 0 until they agreed): it waits
	// again after a restart, under the same id.
	Expecting bool `json:"expecting,omitempty"`
}

// identityFile is the identity's file name in the data dir.
const identityFile = "identity.json"

// loadIdentity returns the identity in dir, or nil if it has none.
func loadIdentity(fs vfs.FS, dir string) (*identity, error) {
	f, err := fs.Open(filepath.Join(dir, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	id := &identity{}
	if err := json.Unmarshal(b, id); err != nil || id.NodeID == 0 {
		return nil, fmt.Errorf("server: %s in %s is damaged (%v); the node's identity cannot be recovered from it", identityFile, dir, err)
	}
	return id, nil
}

// save writes the identity to dir durably (storage.WriteFileDurably).
func (id *identity) save(fs vfs.FS, dir string) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	return storage.WriteFileDurably(fs, dir, identityFile, append(b, '\n'))
}

// newNodeID draws a random non-zero id for a node that joins.
func newNodeID() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

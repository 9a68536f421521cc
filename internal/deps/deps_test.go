package deps

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/keystore-dev/keystore"

// TestLayering fails when a package imports, directly or not, something its
// layer must not know about.
func TestLayering(t *testing.T) {
	// The seam between the Raft driver and the state machine: the entry
	// format (entry) and the contract's rules (rules) are small packages
	// of their own, with neither Raft's driver, nor Pebble, nor gRPC.
	pure := []string{"google.golang.org/grpc", "github.com/cockroachdb/pebble/v2", "go.etcd.io/raft/v3",
		mod + "/storage", mod + "/raftnode", mod + "/api", mod + "/server",
		mod + "/proto/keystore/v1", mod + "/proto/keystore/peer/v1"}
	forbidden := map[string][]string{
		"entry":    append(pure, mod+"/rules"),
		"rules":    append(pure, mod+"/entry"),
		"storage":  {"google.golang.org/grpc", mod + "/raftnode", mod + "/api", mod + "/server", mod + "/proto/keystore/v1", mod + "/proto/keystore/peer/v1"},
		"raftnode": {mod + "/storage", mod + "/rules", mod + "/api", mod + "/server", mod + "/proto/keystore/v1"},
		// Gossip knows node ids and addresses, nothing of the API, the
		// store or Raft (each Raft group keeps its own membership).
		"membership": {mod + "/storage", mod + "/raftnode", mod + "/api", mod + "/server", mod + "/proto/keystore/v1",
			"google.golang.org/grpc", "go.etcd.io/raft/v3", "github.com/cockroachdb/pebble/v2"},
		// The API reads records through its Store interface and runs the
		// rules (DecideClaim); the store itself is not its business.
		"api": {mod + "/server", mod + "/cmd", mod + "/storage", "github.com/cockroachdb/pebble/v2"},
		// The client ships to callers: the API's protos and gRPC, nothing
		// of the server.
		"client": {mod + "/storage", mod + "/raftnode", mod + "/api", mod + "/server", mod + "/expiry",
			mod + "/proto/keystore/state/v1", mod + "/proto/keystore/peer/v1",
			"github.com/cockroachdb/pebble/v2", "go.etcd.io/raft/v3"},
	}
	// The integrations ship with the client and obey the same rule.
	for _, p := range []string{"client/grpcidem", "client/httpidem"} {
		forbidden[p] = forbidden["client"]
	}
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", mod+"/"+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		deps := strings.Fields(string(out))
		for _, d := range deps {
			for _, b := range bad {
				if d == b || strings.HasPrefix(d, b+"/") {
					t.Errorf("%s depends on %s; its layer must not", pkg, d)
				}
			}
		}
	}
}

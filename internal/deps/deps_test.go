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
	forbidden := map[string][]string{
		"storage":  {"google.golang.org/grpc", mod + "/raftnode", mod + "/api", mod + "/server", mod + "/proto/keystore/v1", mod + "/proto/keystore/peer/v1"},
		"raftnode": {mod + "/storage", mod + "/api", mod + "/server", mod + "/proto/keystore/v1"},
		"api":      {mod + "/server", mod + "/cmd"},
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

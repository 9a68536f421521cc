package entry

import (
	"errors"
	"strings"
	"testing"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
)

// TestClusterVersionEntries: a SetClusterVersion entry needs the version
// it sets and carries nothing else (an older binary reads it as a tick);
// an entry without a version needs 1; CheckSupported refuses only what is
// above ClusterVersion, naming both versions.
func TestClusterVersionEntries(t *testing.T) {
	var env statev1.Entry
	if err := Decode(SetClusterVersion(42, 2), &env); err != nil {
		t.Fatal(err)
	}
	if Needs(&env) != 2 || env.GetSetClusterVersion() != 2 || env.GetTime() != 42 || len(env.GetCommand()) != 0 || len(env.GetProposals()) != 0 {
		t.Fatalf("SetClusterVersion(42, 2) = %v, needs %d; want a tick-shaped entry setting and needing 2", &env, Needs(&env))
	}
	if id, tm, ok := Header(SetClusterVersion(42, 2)); !ok || id != 0 || tm != 42 {
		t.Fatalf("Header of a SetClusterVersion entry: %d %d %v", id, tm, ok)
	}
	if err := Decode(Tick(7), &env); err != nil || Needs(&env) != 1 {
		t.Fatalf("a tick needs %d (%v); want 1", Needs(&env), err)
	}
	if err := CheckSupported("x", ClusterVersion); err != nil {
		t.Fatalf("CheckSupported(ClusterVersion): %v", err)
	}
	err := CheckSupported("entry 9", ClusterVersion+1)
	var ue *UnsupportedError
	if !errors.As(err, &ue) || ue.Need != ClusterVersion+1 || !strings.Contains(err.Error(), "entry 9 needs cluster version 3") || !strings.Contains(err.Error(), "up to 2") {
		t.Fatalf("CheckSupported(ClusterVersion+1): %v", err)
	}
	if EffectiveVersion(0) != 1 || EffectiveVersion(2) != 2 {
		t.Fatal("EffectiveVersion")
	}
}

package scope

import (
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

func TestPrefixFormat(t *testing.T) {
	sum := sha256.Sum256([]byte("tenant-7"))
	want := base64.RawURLEncoding.EncodeToString(sum[:])[:22] + ":"
	if got := Prefix("tenant-7", true); got != want {
		t.Fatalf("Prefix(tenant-7): got %q; want %q", got, want)
	}
	if got := Prefix("", false); got != "-:" {
		t.Fatalf("anonymous prefix: got %q; want %q", got, "-:")
	}
	for _, scope := range []string{"a", strings.Repeat("s", 10000), "x509-cn:alice", "é\x00"} {
		p := Prefix(scope, true)
		if len(p) != PrefixLen || strings.Index(p, ":") != hashLen {
			t.Fatalf("Prefix(%.20q) = %q; want %d base64url characters and a colon", scope, p, hashLen)
		}
	}
	if MaxKeyLen != 232 || MaxKeyLen+PrefixLen != StoreMaxKeyLen {
		t.Fatalf("MaxKeyLen = %d; want 232, keystore's %d less the %d-byte prefix", MaxKeyLen, StoreMaxKeyLen, PrefixLen)
	}
}

// TestStoredKeysNeverCollide: distinct (scope, key) pairs give distinct
// keystore keys, even when a key is built to look like another scope's
// stored key.
func TestStoredKeysNeverCollide(t *testing.T) {
	type pair struct {
		scope  string
		scoped bool
		key    string
	}
	alice := Prefix("alice", true)
	pairs := []pair{
		{"", false, "k"},
		{"", false, alice + "k"},       // anonymous, sending alice's stored key
		{"", false, "-:k"},             // anonymous, sending the anonymous prefix
		{"", false, alice[:20] + ":k"}, // anonymous, a colon where a prefix has one
		{"alice", true, "k"},
		{"alice", true, "-:k"},
		{"bob", true, "k"},
		{"bob", true, alice + "k"},
		{"alice:", true, "k"}, // scopes are hashed whole: no split ambiguity
		{"alic", true, "e:k"},
		{"", true, "k"}, // not reachable (an empty scope is refused), but distinct all the same
	}
	seen := map[string]pair{}
	for _, p := range pairs {
		k := Prefix(p.scope, p.scoped) + p.key
		if prev, ok := seen[k]; ok {
			t.Fatalf("%+v and %+v both give %q", prev, p, k)
		}
		seen[k] = p
		wantColon := 1
		if p.scoped {
			wantColon = hashLen
		}
		if i := strings.Index(k, ":"); i != wantColon {
			t.Fatalf("stored key %q of %+v: first colon at %d; want %d", k, p, i, wantColon)
		}
	}
}

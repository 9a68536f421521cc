package version

import (
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	defer func(c string) { commit = c }(commit)
	commit = "0123456789abcdef0123-dirty"
	i := Get()
	if i.Commit != "0123456789abcdef0123" || !i.Modified || !strings.HasPrefix(i.GoVersion, "go") {
		t.Fatalf("Get() = %+v; want the linked commit, modified, and the Go version", i)
	}
	if s := i.String(); !strings.Contains(s, "commit 0123456789ab (modified)") || !strings.HasPrefix(s, "keystore ") {
		t.Fatalf("String() = %q", s)
	}
	commit = ""
	if i := Get(); i.Version == "" || i.Commit == "" {
		t.Fatalf("Get() without a linked commit = %+v; want every field set", i)
	}
}

package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigPrecedence: the command line beats the environment, which
// beats the config file, which beats the default; lists and maps in the
// file become list flags; unknown names and bad values say where they
// came from.
func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keystore.yaml")
	if err := os.WriteFile(file, []byte(`
data-dir: /from/file
client-addr: 127.0.0.1:1111
max-wait: 10m
join: [a:7201, b:7201]
initial-cluster: {n1: "127.0.0.1:7101", n2: "127.0.0.1:7102"}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	newFS := func() (*flag.FlagSet, map[string]*string) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.String("config", "", "")
		vals := map[string]*string{}
		for _, n := range []string{"data-dir", "client-addr", "peer-addr", "join", "initial-cluster"} {
			vals[n] = fs.String(n, "default", "")
		}
		fs.Duration("max-wait", time.Hour, "")
		return fs, vals
	}
	env := map[string]string{"KEYSTORE_CLIENT_ADDR": "127.0.0.1:2222", "KEYSTORE_PEER_ADDR": "127.0.0.1:3333"}
	fs, vals := newFS()
	if err := fs.Parse([]string{"--config", file, "--peer-addr", "127.0.0.1:4444"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfig(fs, func(k string) string { return env[k] }, true); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"data-dir":        "/from/file",     // file only
		"client-addr":     "127.0.0.1:2222", // environment beats file
		"peer-addr":       "127.0.0.1:4444", // command line beats environment
		"join":            "a:7201,b:7201",
		"initial-cluster": "n1=127.0.0.1:7101,n2=127.0.0.1:7102",
	} {
		if got := *vals[name]; got != want {
			t.Errorf("%s = %q; want %q", name, got, want)
		}
	}
	if got := fs.Lookup("max-wait").Value.String(); got != "10m0s" {
		t.Errorf("max-wait = %s; want 10m0s from the file", got)
	}

	if err := os.WriteFile(file, []byte("data-dri: /typo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs, _ = newFS()
	_ = fs.Parse([]string{"--config", file})
	if err := applyConfig(fs, func(string) string { return "" }, true); err == nil || !strings.Contains(err.Error(), `"data-dri" is not a keystored flag`) {
		t.Errorf("unknown name in the file: %v; want it named", err)
	}
	fs, _ = newFS()
	_ = fs.Parse(nil)
	if err := applyConfig(fs, func(k string) string { return map[string]string{"KEYSTORE_MAX_WAIT": "soon"}[k] }, true); err == nil || !strings.Contains(err.Error(), "KEYSTORE_MAX_WAIT") {
		t.Errorf("bad value in the environment: %v; want the variable named", err)
	}
}

package tlsconf

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/certgen"
)

// waitFor polls cond until it holds, failing the test after five seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rotation is a server whose certificate files (server.crt, server.key) the
// test replaces, and a client of it.
type rotation struct {
	f      *fixture
	files  Files
	source *Source
	log    *syncBuffer
	server *tls.Config // made once, before any rotation
	client *tls.Config
}

// newRotation serves a certificate named n1 and dials it.
func newRotation(t *testing.T) *rotation {
	t.Helper()
	f := newFixture(t)
	files := f.node(t, f.ca, "server", "n1")
	files.CA = f.path("ca.crt")
	log := new(syncBuffer)
	s := mustLoad(t, files, log)
	clientFiles := f.node(t, f.ca, "client", "c1")
	clientFiles.CA = f.path("ca.crt")
	return &rotation{
		f: f, files: files, source: s, log: log,
		server: s.ServerConfig(tls.RequireAndVerifyClientCert),
		client: mustLoad(t, clientFiles, nil).ClientConfig(""),
	}
}

// rotate writes a new server certificate named name.
func (r *rotation) rotate(t *testing.T, name string) {
	t.Helper()
	r.f.node(t, r.f.ca, "server", name)
}

// served returns the CommonName the server presents now.
func (r *rotation) served(t *testing.T) string {
	t.Helper()
	return servedName(t, r.server, r.client)
}

func TestReload(t *testing.T) {
	r := newRotation(t)
	if got := r.served(t); got != "n1" {
		t.Fatalf("served %q; want n1", got)
	}
	r.rotate(t, "n2")
	if got := r.served(t); got != "n1" {
		t.Errorf("before Reload, served %q; want n1", got)
	}
	if err := r.source.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := r.served(t); got != "n2" {
		t.Errorf("after Reload, served %q; want n2", got)
	}
	if log := r.log.String(); !strings.Contains(log, "tls material reloaded") || !strings.Contains(log, "CN=n2") {
		t.Errorf("log does not report the new certificate:\n%s", log)
	}
	pair, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.source.NotAfter(), pair.Leaf.NotAfter; !got.Equal(want) {
		t.Errorf("NotAfter = %s; want %s", got, want)
	}
	key, err := os.ReadFile(r.files.Key)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(key), "\n") {
		if len(line) > 16 && !strings.HasPrefix(line, "-----") && strings.Contains(r.log.String(), line) {
			t.Errorf("log holds key material %q", line)
		}
	}
}

func TestReloadUnchanged(t *testing.T) {
	r := newRotation(t)
	if err := r.source.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if log := r.log.String(); strings.Contains(log, "tls material reloaded") {
		t.Errorf("Reload of unchanged files logged a reload:\n%s", log)
	}
}

func TestReloadFailureKeepsMaterial(t *testing.T) {
	other := newFixture(t) // for a certificate whose key is not server.key
	otherLeaf := other.node(t, other.ca, "x", "n9")
	tests := []struct {
		name    string
		corrupt func(t *testing.T, r *rotation)
	}{
		{"garbage certificate", func(t *testing.T, r *rotation) { writeAtomic(t, r.files.Cert, []byte("garbage")) }},
		{"garbage key", func(t *testing.T, r *rotation) { writeAtomic(t, r.files.Key, []byte("garbage")) }},
		{"empty certificate", func(t *testing.T, r *rotation) { writeAtomic(t, r.files.Cert, nil) }},
		{"key of another certificate", func(t *testing.T, r *rotation) { copyFile(t, otherLeaf.Cert, r.files.Cert) }},
		{"missing key", func(t *testing.T, r *rotation) {
			if err := os.Remove(r.files.Key); err != nil {
				t.Fatal(err)
			}
		}},
		{"garbage CA", func(t *testing.T, r *rotation) { writeAtomic(t, r.files.CA, []byte("garbage")) }},
		{"CA file with a key", func(t *testing.T, r *rotation) { copyFile(t, r.files.Key, r.files.CA) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRotation(t)
			r.rotate(t, "n2")
			if err := r.source.Reload(); err != nil {
				t.Fatalf("Reload: %v", err)
			}
			notAfter := r.source.NotAfter()
			tt.corrupt(t, r)
			if err := r.source.Reload(); err == nil {
				t.Fatal("Reload of broken files: got nil error")
			}
			if got := r.served(t); got != "n2" {
				t.Errorf("after a failed Reload, served %q; want n2", got)
			}
			if got := r.source.NotAfter(); !got.Equal(notAfter) {
				t.Errorf("NotAfter = %s; want %s", got, notAfter)
			}
			if log := r.log.String(); !strings.Contains(log, "tls reload failed") {
				t.Errorf("log does not report the failure:\n%s", log)
			}
		})
	}
}

func TestWatch(t *testing.T) {
	r := newRotation(t)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { r.source.Watch(ctx, 5*time.Millisecond) })
	defer func() {
		cancel()
		wg.Wait()
	}()

	r.rotate(t, "n2")
	waitFor(t, "n2 to be served", func() bool { return r.served(t) == "n2" })

	// A broken file is reported once and does not replace n2. (The
	// rotation above may have logged a failure of its own, when Watch saw
	// the new certificate with the old key.)
	before := len(r.log.String())
	logged := func() string { return r.log.String()[before:] }
	writeAtomic(t, r.files.Cert, []byte("garbage"))
	waitFor(t, "the failure to be logged", func() bool { return strings.Contains(logged(), "tls reload failed") })
	time.Sleep(50 * time.Millisecond) // about ten more ticks
	if got := r.served(t); got != "n2" {
		t.Errorf("after a broken file, served %q; want n2", got)
	}
	if n := strings.Count(logged(), "tls reload failed"); n != 1 {
		t.Errorf("failure logged %d times; want once:\n%s", n, logged())
	}

	r.rotate(t, "n3")
	waitFor(t, "n3 to be served", func() bool { return r.served(t) == "n3" })
}

// TestWatchSymlinkSwap rotates as Kubernetes updates a mounted secret: the
// files are symlinks through ..data, which is swapped to a new directory.
func TestWatchSymlinkSwap(t *testing.T) {
	f := newFixture(t)
	mount := filepath.Join(f.dir, "mount")
	// version writes a certificate named name into a new directory of the
	// mount and points ..data at it.
	version := func(t *testing.T, v, name string) {
		leaf, err := f.ca.Issue(certgen.IssueOptions{CommonName: name, DNSNames: []string{name}, Server: true, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(mount, v)
		if _, _, err := certgen.WriteFiles(dir, "tls", leaf); err != nil {
			t.Fatal(err)
		}
		if err := f.ca.WriteFile(filepath.Join(dir, "ca.crt")); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(mount, "..data_tmp")
		if err := os.Symlink(v, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(mount, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version(t, "..v1", "n1")
	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(mount, name)); err != nil {
			t.Fatal(err)
		}
	}
	s := mustLoad(t, Files{Cert: filepath.Join(mount, "tls.crt"), Key: filepath.Join(mount, "tls.key"), CA: filepath.Join(mount, "ca.crt")}, nil)
	clientFiles := f.node(t, f.ca, "client", "c1")
	clientFiles.CA = f.path("ca.crt")
	server, client := s.ServerConfig(tls.RequireAndVerifyClientCert), mustLoad(t, clientFiles, nil).ClientConfig("")
	if got := servedName(t, server, client); got != "n1" {
		t.Fatalf("served %q; want n1", got)
	}

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { s.Watch(ctx, 5*time.Millisecond) })
	defer func() {
		cancel()
		wg.Wait()
	}()
	version(t, "..v2", "n2")
	waitFor(t, "n2 to be served", func() bool { return servedName(t, server, client) == "n2" })
}

func TestWatchStops(t *testing.T) {
	r := newRotation(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		r.source.Watch(ctx, time.Hour)
		close(done)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after its context was done")
	}
}

// TestCARotation shows that a new CA file is used by the next handshake, on
// the server (client certificates) and on the client (server certificates),
// through configurations made before the rotation.
func TestCARotation(t *testing.T) {
	f := newFixture(t)
	ca, otherCA := f.path("ca.crt"), f.path("other-ca.crt")

	t.Run("server", func(t *testing.T) {
		serverFiles := f.node(t, f.ca, "n1", "n1")
		serverFiles.CA = f.writeCAs(t, "server-trust.crt", f.ca)
		server := mustLoad(t, serverFiles, nil)
		serverCfg := server.ServerConfig(tls.RequireAndVerifyClientCert)
		oldClient := f.node(t, f.ca, "old", "old")
		oldClient.CA = ca
		newClient := f.node(t, f.other, "new", "new")
		newClient.CA = ca // the server's certificate is still of the first CA
		oldCfg := mustLoad(t, oldClient, nil).ClientConfig("n1")
		newCfg := mustLoad(t, newClient, nil).ClientConfig("n1")

		check := func(t *testing.T, cfg *tls.Config, want bool) {
			t.Helper()
			srv, cli := handshake(t, serverCfg, cfg)
			if ok := srv.err == nil && cli.err == nil; ok != want {
				t.Errorf("handshake ok = %v (server error %v, client error %v); want %v", ok, srv.err, cli.err, want)
			}
		}
		check(t, oldCfg, true)
		check(t, newCfg, false)

		// Both CAs during the rotation, then only the new one.
		f.writeCAs(t, "server-trust.crt", f.ca, f.other)
		if err := server.Reload(); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		check(t, oldCfg, true)
		check(t, newCfg, true)
		f.writeCAs(t, "server-trust.crt", f.other)
		if err := server.Reload(); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		check(t, oldCfg, false)
		check(t, newCfg, true)
	})

	t.Run("client", func(t *testing.T) {
		oldServer := f.node(t, f.ca, "old-n1", "n1")
		oldServer.CA = ca
		newServer := f.node(t, f.other, "new-n1", "n1")
		newServer.CA = otherCA
		oldCfg := mustLoad(t, oldServer, nil).ServerConfig(tls.NoClientCert)
		newCfg := mustLoad(t, newServer, nil).ServerConfig(tls.NoClientCert)
		client := mustLoad(t, Files{CA: f.writeCAs(t, "client-trust.crt", f.ca)}, nil)
		clientCfg := client.ClientConfig("n1")

		check := func(t *testing.T, server *tls.Config, want bool) {
			t.Helper()
			srv, cli := handshake(t, server, clientCfg)
			if ok := srv.err == nil && cli.err == nil; ok != want {
				t.Errorf("handshake ok = %v (server error %v, client error %v); want %v", ok, srv.err, cli.err, want)
			}
		}
		check(t, oldCfg, true)
		check(t, newCfg, false)
		f.writeCAs(t, "client-trust.crt", f.other)
		if err := client.Reload(); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		check(t, oldCfg, false)
		check(t, newCfg, true)
	})
}

// TestConcurrentReload runs handshakes while the certificate changes under
// them (for the race detector): each sees one certificate or the other.
func TestConcurrentReload(t *testing.T) {
	r := newRotation(t)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var leaves []*certgen.Leaf
	for _, name := range []string{"n1", "n2"} {
		leaf, err := r.f.ca.Issue(certgen.IssueOptions{CommonName: name, Server: true, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, leaf)
	}
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			if _, _, err := certgen.WriteFiles(r.f.dir, "server", leaves[i%2]); err != nil {
				t.Error(err)
				return
			}
			r.source.Reload() // may see a new certificate with the old key
		}
	})
	for range 20 {
		if got := r.served(t); got != "n1" && got != "n2" {
			t.Errorf("served %q; want n1 or n2", got)
		}
	}
	cancel()
	wg.Wait()
}

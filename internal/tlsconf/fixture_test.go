package tlsconf

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/certgen"
)

// fixture is a directory of certificates from two unrelated CAs.
type fixture struct {
	dir   string
	ca    *certgen.CA // the cluster's
	other *certgen.CA // a stranger's
}

// newFixture makes the two CAs and writes ca.crt and other-ca.crt.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), ca: mustNewCA(t, "cluster CA"), other: mustNewCA(t, "other CA")}
	if err := f.ca.WriteFile(f.path("ca.crt")); err != nil {
		t.Fatal(err)
	}
	if err := f.other.WriteFile(f.path("other-ca.crt")); err != nil {
		t.Fatal(err)
	}
	return f
}

// path returns the path of a file in the fixture's directory.
func (f *fixture) path(name string) string { return filepath.Join(f.dir, name) }

// node issues a node certificate (CN and DNS SAN name, plus localhost and
// 127.0.0.1, server and client usage) from ca and writes it as file.
func (f *fixture) node(t *testing.T, ca *certgen.CA, file, name string) Files {
	t.Helper()
	return f.issue(t, ca, file, certgen.IssueOptions{CommonName: name, DNSNames: []string{name, "localhost"},
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Client: true})
}

// issue issues a certificate from ca and writes it as file.crt and .key.
func (f *fixture) issue(t *testing.T, ca *certgen.CA, file string, opts certgen.IssueOptions) Files {
	t.Helper()
	leaf, err := ca.Issue(opts)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := certgen.WriteFiles(f.dir, file, leaf)
	if err != nil {
		t.Fatal(err)
	}
	return Files{Cert: certPath, Key: keyPath}
}

// writeCAs writes the certificates of cas, concatenated, to file and
// returns its path.
func (f *fixture) writeCAs(t *testing.T, file string, cas ...*certgen.CA) string {
	t.Helper()
	var data []byte
	for _, ca := range cas {
		data = append(data, ca.CertPEM...)
	}
	path := f.path(file)
	writeAtomic(t, path, data)
	return path
}

// writeAtomic replaces the file at path with data, by renaming a new file
// over it, as a careful operator would.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// copyFile copies the file at from to to, atomically.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, to, data)
}

func mustNewCA(t *testing.T, name string) *certgen.CA {
	t.Helper()
	ca, err := certgen.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// mustLoad loads files with a logger writing to log (if not nil).
func mustLoad(t *testing.T, files Files, log *syncBuffer) *Source {
	t.Helper()
	var logger *slog.Logger
	if log != nil {
		logger = slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := Load(files, logger)
	if err != nil {
		t.Fatalf("Load(%+v): %v", files, err)
	}
	return s
}

// side is the outcome of one end of a handshake.
type side struct {
	state tls.ConnectionState
	err   error
}

// handshake connects a client with config client to a server with config
// server over loopback TCP and returns what each side saw. After the
// handshake, the client sends "ping" and the server answers "pong": in
// TLS 1.3 the client completes its handshake before the server has checked
// the client's certificate, and the round trip makes a refusal visible to
// both.
func handshake(t *testing.T, server, client *tls.Config) (srv, cli side) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan side, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- side{err: err}
			return
		}
		defer conn.Close()
		done <- exchange(tls.Server(conn, server), false)
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cli = exchange(tls.Client(conn, client), true)
	conn.Close()
	return <-done, cli
}

// exchange runs the handshake and the ping-pong on c.
func exchange(c *tls.Conn, client bool) side {
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return side{err: err}
	}
	if err := c.Handshake(); err != nil {
		return side{err: err}
	}
	send, want := []byte("pong"), []byte("ping")
	if client {
		send, want = want, send
		if _, err := c.Write(send); err != nil {
			return side{err: err}
		}
	}
	got := make([]byte, len(want))
	if _, err := c.Read(got); err != nil {
		return side{err: err}
	}
	if !bytes.Equal(got, want) {
		return side{err: os.ErrInvalid}
	}
	if !client {
		if _, err := c.Write(send); err != nil {
			return side{err: err}
		}
	}
	return side{state: c.ConnectionState()}
}

// servedName dials server and returns the CommonName of the certificate
// it presented, failing the test if the handshake fails.
func servedName(t *testing.T, server, client *tls.Config) string {
	t.Helper()
	srv, cli := handshake(t, server, client)
	if srv.err != nil || cli.err != nil {
		t.Fatalf("handshake: server error %v, client error %v; want none", srv.err, cli.err)
	}
	return cli.state.PeerCertificates[0].Subject.CommonName
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

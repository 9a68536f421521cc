package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/keystore-dev/keystore/internal/certgen"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) {
	// The tests set the token themselves; one from the environment of
	// whoever runs them would change every command.
	_ = os.Unsetenv(tokenEnv)
	os.Exit(m.Run())
}

// certFiles are a CA and certificates it issued, as PEM files in a test's
// temporary directory, with a stranger CA's.
type certFiles struct {
	dir          string
	ca, stranger *certgen.CA
	caPath       string // the CA's certificate
	strangerPath string // the stranger CA's certificate
	cert, key    string // a client certificate (CN alice) and its key
	serverTLS    *tls.Config
	serverLeaf   *x509.Certificate // the server's certificate
}

func newCertFiles(t *testing.T) *certFiles {
	t.Helper()
	f := &certFiles{dir: t.TempDir()}
	var err error
	if f.ca, err = certgen.NewCA("cluster CA"); err != nil {
		t.Fatal(err)
	}
	if f.stranger, err = certgen.NewCA("other CA"); err != nil {
		t.Fatal(err)
	}
	f.caPath, f.strangerPath = filepath.Join(f.dir, "ca.crt"), filepath.Join(f.dir, "other-ca.crt")
	if err := f.ca.WriteFile(f.caPath); err != nil {
		t.Fatal(err)
	}
	if err := f.stranger.WriteFile(f.strangerPath); err != nil {
		t.Fatal(err)
	}
	f.cert, f.key = f.issue(t, "alice", certgen.IssueOptions{CommonName: "alice", Client: true})

	leaf, err := f.ca.Issue(certgen.IssueOptions{CommonName: "node", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(leaf.CertPEM)
	if f.serverLeaf, err = x509.ParseCertificate(block.Bytes); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.Cert)
	f.serverTLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}
	return f
}

// issue writes a certificate of the CA as name.crt and name.key.
func (f *certFiles) issue(t *testing.T, name string, opts certgen.IssueOptions) (certPath, keyPath string) {
	t.Helper()
	leaf, err := f.ca.Issue(opts)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err = certgen.WriteFiles(f.dir, name, leaf)
	if err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// writeFile writes data to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadGlobals parses args as global flags, validates them and loads the
// credential they name.
func loadGlobals(t *testing.T, args ...string) (credential, error) {
	t.Helper()
	g := defaultGlobals()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	g.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	if err := g.validate(); err != nil {
		return credential{}, err
	}
	return g.security.load()
}

func TestSecurityFlags(t *testing.T) {
	f := newCertFiles(t)
	tokenFile := writeFile(t, f.dir, "token", "from-file\nsecond line\n")
	verifies := func(cfg *tls.Config) bool {
		_, err := f.serverLeaf.Verify(x509.VerifyOptions{Roots: cfg.RootCAs, DNSName: "127.0.0.1"})
		return err == nil
	}
	for _, tc := range []struct {
		name  string
		env   string
		args  []string
		check func(c credential) bool
		want  string // what check checks
	}{
		{"plaintext", "", nil,
			func(c credential) bool { return c.tls == nil && c.token == "" }, "no TLS, no token"},
		{"tls", "", []string{"--tls"},
			func(c credential) bool { return c.tls != nil && c.tls.RootCAs == nil && c.tls.ServerName == "" },
			"TLS with the system's roots, the endpoint's name"},
		{"cacert", "", []string{"--cacert", f.caPath},
			func(c credential) bool {
				return c.tls != nil && verifies(c.tls) && len(c.tls.Certificates) == 0 && c.tls.ServerName == ""
			},
			"TLS verifying the cluster's server certificate, no client certificate"},
		{"stranger's cacert", "", []string{"--cacert", f.strangerPath},
			func(c credential) bool { return c.tls != nil && c.tls.RootCAs != nil && !verifies(c.tls) },
			"TLS that refuses the cluster's server certificate"},
		{"client certificate", "", []string{"--cacert", f.caPath, "--cert", f.cert, "--cert-key", f.key},
			func(c credential) bool {
				return c.tls != nil && len(c.tls.Certificates) == 1 && c.tls.Certificates[0].Leaf.Subject.CommonName == "alice"
			}, "the client certificate of alice"},
		{"client certificate alone", "", []string{"--cert", f.cert, "--cert-key", f.key},
			func(c credential) bool { return c.tls != nil && c.tls.RootCAs == nil && len(c.tls.Certificates) == 1 },
			"TLS with the system's roots and the client certificate"},
		{"server name", "", []string{"--cacert", f.caPath, "--server-name", "ks.example"},
			func(c credential) bool { return c.tls != nil && c.tls.ServerName == "ks.example" }, "ServerName ks.example"},
		{"token from env", "from-env", []string{"--tls"},
			func(c credential) bool { return c.token == "from-env" }, "the token from-env"},
		{"token file wins", "from-env", []string{"--tls", "--token-file", tokenFile},
			func(c credential) bool { return c.token == "from-file" }, "the token from-file"},
		{"token in the clear asked for", " from-env\n", []string{"--insecure-token"},
			func(c credential) bool { return c.tls == nil && c.token == "from-env" }, "no TLS, the token from-env"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(tokenEnv, tc.env)
			c, err := loadGlobals(t, tc.args...)
			if err != nil {
				t.Fatalf("flags %q: %v; want %s", tc.args, err, tc.want)
			}
			if !tc.check(c) {
				t.Fatalf("flags %q: got TLS %+v, token %q; want %s", tc.args, c.tls, c.token, tc.want)
			}
		})
	}
}

// getWith is a get of an endpoint where nothing listens, with flags.
func getWith(flags ...string) []string {
	return append(flags, "get", "--endpoints=127.0.0.1:1", "--namespace", "ns", "--key", "k")
}

func TestSecurityUsage(t *testing.T) {
	f := newCertFiles(t)
	tokenFile := writeFile(t, f.dir, "token", "tok\n")
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"cert without key", "", getWith("--cacert", f.caPath, "--cert", f.cert), "--cert needs --cert-key"},
		{"key without cert", "", getWith("--cacert", f.caPath, "--cert-key", f.key), "--cert-key needs --cert"},
		{"server name without tls", "", getWith("--server-name", "ks.example"), "--server-name needs TLS"},
		{"token file in the clear", "", getWith("--token-file", tokenFile), "--token-file: a token needs TLS"},
		{"env token in the clear", "tok", getWith(), "$KEYSTORECTL_TOKEN: a token needs TLS"},
		{"env token in the clear, member list", "tok", []string{"member", "list", "--endpoints=127.0.0.1:1"}, "a token needs TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(tokenEnv, tc.env)
			code, out, errOut := cli(t, tc.args...)
			if code != exitUsage || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "Usage: keystorectl") || out != "" {
				t.Fatalf("keystorectl %s: exit %d, stdout %q, stderr %q; want exit 2, %q and the usage on stderr",
					strings.Join(tc.args, " "), code, out, errOut, tc.want)
			}
		})
	}
}

// TestSecurityFiles: files the flags name that cannot be used fail the
// command (exit 1, one line naming the flag) before it calls anything.
func TestSecurityFiles(t *testing.T) {
	f := newCertFiles(t)
	otherCert, _ := f.issue(t, "bob", certgen.IssueOptions{CommonName: "bob", Client: true})
	absent := filepath.Join(f.dir, "absent")
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"missing cacert", "", getWith("--cacert", absent), "--cacert: open"},
		{"cacert not pem", "", getWith("--cacert", writeFile(t, f.dir, "junk.crt", "junk")), "holds no PEM certificate"},
		{"key of another cert", "", getWith("--cacert", f.caPath, "--cert", otherCert, "--cert-key", f.key),
			"--cert and --cert-key: tls: private key does not match public key"},
		{"missing token file", "", getWith("--tls", "--token-file", absent), "--token-file: open"},
		{"empty token file", "", getWith("--tls", "--token-file", writeFile(t, f.dir, "empty", "\nx\n")), "the first line of"},
		{"token with a space", "a b", getWith("--tls"), "$KEYSTORECTL_TOKEN: the token has a space"},
		{"member list", "", []string{"member", "list", "--endpoints=127.0.0.1:1", "--cacert", absent}, "--cacert: open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(tokenEnv, tc.env)
			wantExit1(t, tc.want, tc.args...)
		})
	}
}

// guard is a KeyStoreService that checks credentials as the server does:
// none is UNAUTHENTICATED; the token "good" or a client certificate may
// read (and finds nothing); any other token is not granted the namespace.
type guard struct {
	keystorev1.UnimplementedKeyStoreServiceServer
}

func (guard) Get(ctx context.Context, in *keystorev1.GetRequest) (*keystorev1.GetResponse, error) {
	c := seenOf(ctx, "")
	switch {
	case c.cn != "" || c.auth == "Bearer good":
		return nil, status.Error(codes.NotFound, "no record")
	case c.auth == "":
		return nil, status.Error(codes.Unauthenticated, "no credential")
	}
	return nil, status.Errorf(codes.PermissionDenied, "namespace %q is not granted", in.GetNamespace())
}

// seenCall is a call as a server saw it.
type seenCall struct {
	method string
	auth   string // the authorization header, "" if none
	cn     string // the client certificate's CommonName, "" if none
}

func seenOf(ctx context.Context, method string) seenCall {
	c := seenCall{method: method[strings.LastIndex(method, "/")+1:]}
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get("authorization")) > 0 {
		c.auth = md.Get("authorization")[0]
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			c.cn = ti.State.PeerCertificates[0].Subject.CommonName
		}
	}
	return c
}

// callLog records the calls a server saw.
type callLog struct {
	mu    sync.Mutex
	calls []seenCall
}

func (l *callLog) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	l.mu.Lock()
	l.calls = append(l.calls, seenOf(ctx, info.FullMethod))
	l.mu.Unlock()
	return handler(ctx, req)
}

// since returns the calls of method from the n-th call on.
func (l *callLog) since(n int, method string) []seenCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []seenCall
	for _, c := range l.calls[n:] {
		if c.method == method {
			out = append(out, c)
		}
	}
	return out
}

func (l *callLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.calls)
}

// serveTLS serves the guard and a fake membership over TLS on a loopback
// port until the test ends, and returns its address.
func serveTLS(t *testing.T, cfg *tls.Config, log *callLog) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)), grpc.UnaryInterceptor(log.intercept))
	keystorev1.RegisterKeyStoreServiceServer(s, guard{})
	keystorev1.RegisterClusterServiceServer(s, &fakeNode{name: "a", f: newFakeMembership()})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// TestOverTLS runs commands against a plain gRPC server over TLS that
// checks credentials as keystored does.
func TestOverTLS(t *testing.T) {
	f := newCertFiles(t)
	log := &callLog{}
	eps := "--endpoints=" + serveTLS(t, f.serverTLS, log)
	tokenFile := writeFile(t, f.dir, "token", "good\n")
	get := []string{"get", eps, "--namespace", "ns", "--key", "k", "--no-discovery"}

	t.Run("member list with a token file", func(t *testing.T) {
		n := log.len()
		mustCLI(t, "member", "list", eps, "--cacert", f.caPath, "--token-file", tokenFile)
		if got := log.since(n, "MemberList"); len(got) != 1 || got[0].auth != "Bearer good" {
			t.Fatalf("MemberList reached the server as %+v; want once with Bearer good", got)
		}
	})

	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string // on the one line of stderr
		auth string // the authorization the server saw
		cn   string // the client certificate the server saw
	}{
		{"token from env", "good", []string{"--cacert", f.caPath}, "get: not found: no record", "Bearer good", ""},
		{"token file", "", []string{"--cacert", f.caPath, "--token-file", tokenFile}, "get: not found: no record", "Bearer good", ""},
		{"client certificate", "", []string{"--cacert", f.caPath, "--cert", f.cert, "--cert-key", f.key}, "get: not found: no record", "", "alice"},
		{"server name", "good", []string{"--cacert", f.caPath, "--server-name", "localhost"}, "get: not found: no record", "Bearer good", ""},
		{"no credential", "", []string{"--cacert", f.caPath},
			"get: unauthenticated: no credential (no credential given: " + credentialHint + ")", "", ""},
		{"token not granted", "bad", []string{"--cacert", f.caPath}, `get: permission denied: namespace "ns" is not granted`, "Bearer bad", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(tokenEnv, tc.env)
			n := log.len()
			args := append(append([]string{}, tc.args...), get...)
			code, out, errOut := cli(t, args...)
			if code != exitError || errOut != "keystorectl "+tc.want+"\n" || out != "" {
				t.Fatalf("keystorectl %s: exit %d, stdout %q, stderr %q; want exit 1 and the line %q",
					strings.Join(args, " "), code, out, errOut, "keystorectl "+tc.want)
			}
			if got := log.since(n, "Get"); len(got) != 1 || got[0].auth != tc.auth || got[0].cn != tc.cn {
				t.Fatalf("Get reached the server as %+v; want once with authorization %q and client certificate %q", got, tc.auth, tc.cn)
			}
		})
	}

	// A handshake that fails is no answer from the cluster: exit 3.
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"another CA", []string{"--cacert", f.strangerPath}, "certificate signed by unknown authority"},
		{"another name", []string{"--cacert", f.caPath, "--server-name", "ks.example"}, "not ks.example"},
		{"plaintext", []string{"--insecure-token", "--timeout", "2s"}, "keystorectl get: "},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			t.Setenv(tokenEnv, "good")
			n := log.len()
			wantExit(t, exitUnreachable, tc.want, append(append([]string{}, tc.args...), get...)...)
			if got := log.len() - n; got != 0 {
				t.Fatalf("the server saw %d calls; want none", got)
			}
		})
	}
}

func TestSecurityHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help", "get"}} {
		out := mustCLI(t, args...)
		for _, want := range []string{"-tls", "-cacert FILE", "-cert FILE", "-cert-key FILE", "-server-name NAME",
			"-token-file FILE", "-insecure-token", "KEYSTORECTL_TOKEN"} {
			if !strings.Contains(out, want) {
				t.Fatalf("keystorectl %s does not mention %s:\n%s", strings.Join(args, " "), want, out)
			}
		}
	}
	if out := mustCLI(t, "-h"); !strings.Contains(out, "Credentials: ") {
		t.Fatalf("keystorectl -h does not explain credentials:\n%s", out)
	}
}

package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/certgen"
	"github.com/keystore-dev/keystore/internal/tlsconf"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// credServer is a loopback gRPC server with no keystore behind it: Get
// answers NOT_FOUND, MemberList lists the members given, and every call is
// recorded with the credentials it came with.
type credServer struct {
	keystorev1.UnimplementedKeyStoreServiceServer
	keystorev1.UnimplementedClusterServiceServer
	addr string
	// members answers MemberList; nil: this server alone, leading.
	members func() []*keystorev1.Member
	// check, when set, may refuse a call given its authorization header.
	check func(auth string) error

	mu    sync.Mutex
	calls []seenCall
}

// seenCall is one call as the server saw it.
type seenCall struct {
	method string // the method's name alone: "Get", "MemberList"
	auth   string // the authorization header, "" if none
	tls    bool   // the call came over TLS
	cn     string // the client certificate's CommonName, "" if none
}

// serveCreds serves s on 127.0.0.1 (with TLS if cfg is not nil) until the
// test ends, and returns it with its address set.
func serveCreds(t *testing.T, cfg *tls.Config, s *credServer) *credServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	opts := []grpc.ServerOption{grpc.UnaryInterceptor(s.intercept)}
	if cfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	srv := grpc.NewServer(opts...)
	keystorev1.RegisterKeyStoreServiceServer(srv, s)
	keystorev1.RegisterClusterServiceServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return s
}

func (s *credServer) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	c := seenCall{method: info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]}
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get("authorization")) > 0 {
		c.auth = md.Get("authorization")[0]
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			c.tls = true
			if certs := ti.State.PeerCertificates; len(certs) > 0 {
				c.cn = certs[0].Subject.CommonName
			}
		}
	}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
	if s.check != nil {
		if err := s.check(c.auth); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

func (s *credServer) Get(context.Context, *keystorev1.GetRequest) (*keystorev1.GetResponse, error) {
	return nil, status.Error(codes.NotFound, "no such record")
}

func (s *credServer) MemberList(context.Context, *keystorev1.MemberListRequest) (*keystorev1.MemberListResponse, error) {
	if s.members != nil {
		return &keystorev1.MemberListResponse{Members: s.members()}, nil
	}
	return &keystorev1.MemberListResponse{Members: []*keystorev1.Member{{Name: "n1", ClientAddress: s.addr, IsLeader: true}}}, nil
}

// seen returns the calls of method so far.
func (s *credServer) seen(method string) []seenCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []seenCall
	for _, c := range s.calls {
		if c.method == method {
			out = append(out, c)
		}
	}
	return out
}

// waitSeen waits until the server has seen a call of method that ok
// accepts, or fails the test after 5s.
func (s *credServer) waitSeen(t *testing.T, method string, ok func(seenCall) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !slices.ContainsFunc(s.seen(method), ok) {
		if time.Now().After(deadline) {
			t.Fatalf("server %s saw %s calls %+v after 5s; want one more", s.addr, method, s.seen(method))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newCredClient makes a client of cfg that asks for the members often and
// gives up soon; it is closed when the test ends.
func newCredClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	cfg.LeaderRefresh = 50 * time.Millisecond
	cfg.AttemptTimeout = 2 * time.Second
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 2
	}
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// wantNotFound makes a Get and fails the test unless the server answered
// (NOT_FOUND, all the fake knows).
func wantNotFound(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Get(ctx, "ns", "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get: %v; want ErrNotFound, the server's answer", err)
	}
}

func authIs(want string) func(seenCall) bool {
	return func(c seenCall) bool { return c.auth == want }
}

func TestTokenReachesServer(t *testing.T) {
	srv := serveCreds(t, nil, &credServer{})
	c := newCredClient(t, Config{Endpoints: []string{srv.addr}, Token: "s3cret", InsecureToken: true})
	wantNotFound(t, c)
	if got := srv.seen("Get"); len(got) != 1 || got[0].auth != "Bearer s3cret" {
		t.Fatalf("Get reached the server as %+v; want once with authorization Bearer s3cret", got)
	}
	// Discovery asks with the same credentials.
	srv.waitSeen(t, "MemberList", authIs("Bearer s3cret"))
	for _, m := range srv.seen("MemberList") {
		if m.auth != "Bearer s3cret" {
			t.Fatalf("MemberList came with authorization %q; want Bearer s3cret", m.auth)
		}
	}

	// Without a token, no authorization header.
	plain := serveCreds(t, nil, &credServer{})
	wantNotFound(t, newCredClient(t, Config{Endpoints: []string{plain.addr}}))
	if got := plain.seen("Get"); len(got) != 1 || got[0].auth != "" {
		t.Fatalf("Get without a token reached the server as %+v; want once without authorization", got)
	}
}

// TestRefusedCredentialsNotRetried: UNAUTHENTICATED and PERMISSION_DENIED
// come back after one attempt, the status kept.
func TestRefusedCredentialsNotRetried(t *testing.T) {
	srv := serveCreds(t, nil, &credServer{check: func(auth string) error {
		switch auth {
		case "":
			return status.Error(codes.Unauthenticated, "no credential")
		case "Bearer good":
			return nil
		}
		return status.Error(codes.PermissionDenied, `namespace "ns" is not granted`)
	}})
	for _, tc := range []struct {
		token string
		want  codes.Code
	}{
		{"", codes.Unauthenticated},
		{"wrong", codes.PermissionDenied},
	} {
		t.Run(tc.want.String(), func(t *testing.T) {
			before := len(srv.seen("Get"))
			c := newCredClient(t, Config{Endpoints: []string{srv.addr}, Token: tc.token, InsecureToken: true,
				MaxAttempts: 8, NoDiscovery: true})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := c.Get(ctx, "ns", "k")
			if status.Code(err) != tc.want {
				t.Fatalf("Get: %v; want %v", err, tc.want)
			}
			if n := len(srv.seen("Get")) - before; n != 1 {
				t.Fatalf("Get was tried %d times; want once (not retried)", n)
			}
		})
	}
}

// writeFileAtomic replaces path with data by a rename, as a rotation does.
func writeFileAtomic(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestTokenFileRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	writeFileAtomic(t, path, "tok-1\n")
	srv := serveCreds(t, nil, &credServer{})
	c := newCredClient(t, Config{Endpoints: []string{srv.addr}, TokenFile: path, InsecureToken: true, NoDiscovery: true})
	wantNotFound(t, c)
	if got := srv.seen("Get"); len(got) != 1 || got[0].auth != "Bearer tok-1" {
		t.Fatalf("Get reached the server as %+v; want authorization Bearer tok-1", got)
	}

	// Rewritten in place, same size: seen within tokenFileCheck.
	if err := os.WriteFile(path, []byte("tok-2\nignored second line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(tokenFileCheck + 3*time.Second)
	for got := ""; got != "Bearer tok-2"; {
		if time.Now().After(deadline) {
			t.Fatalf("after the file was rewritten, Get still sent %q; want Bearer tok-2 within %v", got, tokenFileCheck)
		}
		time.Sleep(100 * time.Millisecond)
		wantNotFound(t, c)
		calls := srv.seen("Get")
		got = calls[len(calls)-1].auth
		if got != "Bearer tok-1" && got != "Bearer tok-2" {
			t.Fatalf("Get sent %q; want the old token or the new one", got)
		}
	}
}

func TestTokenFileRereads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	writeFileAtomic(t, path, "  first \r\n")
	f, err := openTokenFile(path, 0) // read again on every call
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		what   string
		change func()
		want   string
	}{
		{"as read", func() {}, "first"},
		{"replaced", func() { writeFileAtomic(t, path, "second") }, "second"},
		{"removed", func() { _ = os.Remove(path) }, "second"},
		{"back", func() { writeFileAtomic(t, path, "third\n") }, "third"},
		{"emptied", func() { writeFileAtomic(t, path, "\n") }, "third"},
		{"garbage", func() { writeFileAtomic(t, path, "a b\n") }, "third"},
		{"fixed", func() { writeFileAtomic(t, path, "fourth") }, "fourth"},
	}
	for _, s := range steps {
		s.change()
		if got := f.token(); got != s.want {
			t.Fatalf("token() after the file was %s = %q; want %q", s.what, got, s.want)
		}
	}

	// With a period, the file is not read again before it has passed.
	slow, err := openTokenFile(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeFileAtomic(t, path, "fifth")
	if got := slow.token(); got != "fourth" {
		t.Fatalf("token() within the period = %q; want the token read at open, fourth", got)
	}
}

func TestCredentialConfigRefused(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	writeFileAtomic(t, good, "tok\n")
	empty := filepath.Join(dir, "empty")
	writeFileAtomic(t, empty, "\n\n")
	tlsCfg := &tls.Config{}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "": New succeeds
	}{
		{"token without tls", Config{Token: "t"}, "a token needs Config.TLS"},
		{"token file without tls", Config{TokenFile: good}, "a token needs Config.TLS"},
		{"token over plaintext allowed", Config{Token: "t", InsecureToken: true}, ""},
		{"token with tls", Config{Token: "t", TLS: tlsCfg}, ""},
		{"token file with tls", Config{TokenFile: good, TLS: tlsCfg}, ""},
		{"insecure without token", Config{InsecureToken: true}, ""},
		{"both", Config{Token: "t", TokenFile: good, TLS: tlsCfg}, "not both"},
		{"missing file", Config{TokenFile: filepath.Join(dir, "absent"), TLS: tlsCfg}, "no such file"},
		{"empty file", Config{TokenFile: empty, TLS: tlsCfg}, "empty token"},
		{"token with a space", Config{Token: "a b", TLS: tlsCfg}, "a space"},
		{"token with a newline", Config{Token: "ab\n", TLS: tlsCfg}, "a space"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Endpoints = []string{"127.0.0.1:1"}
			c, err := New(context.Background(), tc.cfg)
			if err == nil {
				_ = c.Close()
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("New: %v; want a client", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("New: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

// pki is a CA and certificates it issued, for loopback servers and their
// clients.
type pki struct {
	ca   *certgen.CA
	pool *x509.CertPool
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	ca, err := certgen.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &pki{ca: ca, pool: pool}
}

func (p *pki) issue(t *testing.T, opts certgen.IssueOptions) tls.Certificate {
	t.Helper()
	leaf, err := p.ca.Issue(opts)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// serverTLS is the configuration of a loopback server: a certificate for
// 127.0.0.1 and localhost, client certificates verified if given.
func (p *pki) serverTLS(t *testing.T) *tls.Config {
	t.Helper()
	cert := p.issue(t, certgen.IssueOptions{CommonName: "node", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true})
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: p.pool, ClientAuth: tls.VerifyClientCertIfGiven}
}

func TestTLS(t *testing.T) {
	cluster := newPKI(t, "cluster CA")
	srv := serveCreds(t, cluster.serverTLS(t), &credServer{})

	t.Run("token over tls", func(t *testing.T) {
		before := len(srv.seen("Get"))
		c := newCredClient(t, Config{Endpoints: []string{srv.addr}, TLS: &tls.Config{RootCAs: cluster.pool}, Token: "t1", NoDiscovery: true})
		wantNotFound(t, c)
		got := srv.seen("Get")[before:]
		if len(got) != 1 || !got[0].tls || got[0].auth != "Bearer t1" || got[0].cn != "" {
			t.Fatalf("Get reached the server as %+v; want once, over TLS, with Bearer t1 and no client certificate", got)
		}
	})

	t.Run("client certificate", func(t *testing.T) {
		before := len(srv.seen("Get"))
		cert := cluster.issue(t, certgen.IssueOptions{CommonName: "billing", Client: true})
		c := newCredClient(t, Config{Endpoints: []string{srv.addr}, NoDiscovery: true,
			TLS: &tls.Config{RootCAs: cluster.pool, Certificates: []tls.Certificate{cert}}})
		wantNotFound(t, c)
		if got := srv.seen("Get")[before:]; len(got) != 1 || !got[0].tls || got[0].cn != "billing" {
			t.Fatalf("Get reached the server as %+v; want once, over TLS, from CN billing", got)
		}
	})

	t.Run("reloadable files through tlsconf", func(t *testing.T) {
		dir := t.TempDir()
		leaf, err := cluster.ca.Issue(certgen.IssueOptions{CommonName: "reloader", Client: true})
		if err != nil {
			t.Fatal(err)
		}
		certPath, keyPath, err := certgen.WriteFiles(dir, "client", leaf)
		if err != nil {
			t.Fatal(err)
		}
		caPath := filepath.Join(dir, "ca.crt")
		if err := cluster.ca.WriteFile(caPath); err != nil {
			t.Fatal(err)
		}
		src, err := tlsconf.Load(tlsconf.Files{Cert: certPath, Key: keyPath, CA: caPath}, nil)
		if err != nil {
			t.Fatal(err)
		}
		before := len(srv.seen("Get"))
		c := newCredClient(t, Config{Endpoints: []string{srv.addr}, NoDiscovery: true, TLS: src.ClientConfig("127.0.0.1")})
		wantNotFound(t, c)
		if got := srv.seen("Get")[before:]; len(got) != 1 || got[0].cn != "reloader" {
			t.Fatalf("Get reached the server as %+v; want once from CN reloader", got)
		}
	})

	stranger := newPKI(t, "other CA")
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		want string
	}{
		{"another CA", &tls.Config{RootCAs: stranger.pool}, "certificate signed by unknown authority"},
		{"another name", &tls.Config{RootCAs: cluster.pool, ServerName: "node.example"}, "node.example"},
		{"plaintext", nil, ""},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			before := len(srv.seen("Get"))
			c := newCredClient(t, Config{Endpoints: []string{srv.addr}, TLS: tc.cfg, MaxAttempts: 1, NoDiscovery: true})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := c.Get(ctx, "ns", "k")
			if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Get: %v; want a failed connection, saying %q", err, tc.want)
			}
			if n := len(srv.seen("Get")) - before; n != 0 {
				t.Fatalf("the server saw %d Get calls; want none", n)
			}
		})
	}
}

// TestTLSDiscovered: an endpoint learnt from MemberList is called with the
// same TLS configuration and token, its name (an IP address here) verified
// as the seed's is.
func TestTLSDiscovered(t *testing.T) {
	cluster := newPKI(t, "cluster CA")
	var leaderAddr string // set before ready is closed
	ready := make(chan struct{})
	members := func() []*keystorev1.Member {
		<-ready
		return []*keystorev1.Member{{Name: "n2", ClientAddress: leaderAddr, IsLeader: true}}
	}
	seed := serveCreds(t, cluster.serverTLS(t), &credServer{members: members})
	leader := serveCreds(t, cluster.serverTLS(t), &credServer{members: members})
	leaderAddr = leader.addr
	close(ready)

	c := newCredClient(t, Config{Endpoints: []string{seed.addr}, TLS: &tls.Config{RootCAs: cluster.pool}, Token: "t2"})
	withCreds := func(s seenCall) bool { return s.tls && s.auth == "Bearer t2" }
	seed.waitSeen(t, "MemberList", withCreds)
	// The client prefers the leader's endpoint: it asks it for the members,
	// and sends Get there.
	leader.waitSeen(t, "MemberList", withCreds)
	deadline := time.Now().Add(5 * time.Second)
	for len(leader.seen("Get")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Get never reached the discovered leader %s; endpoints %v", leader.addr, c.Endpoints())
		}
		wantNotFound(t, c)
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range append(leader.seen("Get"), leader.seen("MemberList")...) {
		if !withCreds(s) {
			t.Fatalf("the discovered endpoint saw a call %+v; want TLS and Bearer t2", s)
		}
	}
}

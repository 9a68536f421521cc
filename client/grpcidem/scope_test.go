package grpcidem_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/client/grpcidem"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

// The keystore key formats, as the package documents them.

func b64sha256(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func scopedKey(scope, key string) string { return b64sha256(scope)[:22] + ":" + key }

func anonymousKey(key string) string { return "-:" + key }

func authorizationScope(v string) string { return "authorization:" + b64sha256(v) }

// withAuth adds authorization metadata to an outgoing context.
func withAuth(ctx context.Context, v string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", v)
}

// callStatus calls ClusterService.Status (whose Term counts its runs) with
// key and, unless "", authorization auth; it returns the term and whether
// it was a replay.
func (e *env) callStatus(t *testing.T, key, auth string) (term uint64, replay bool) {
	t.Helper()
	ctx := withKey(t, key)
	if auth != "" {
		ctx = withAuth(ctx, auth)
	}
	var h metadata.MD
	resp, err := e.cluster.Status(ctx, &keystorev1.StatusRequest{}, grpc.Header(&h))
	if err != nil {
		t.Fatalf("call with key %q, authorization %q: %v", key, auth, err)
	}
	return resp.GetTerm(), replayed(h)
}

// checkStored fails unless keystore holds a completed record under the
// keystore key want.
func checkStored(t *testing.T, kc *client.Client, ns, want string) {
	t.Helper()
	rec, err := kc.Get(withKey(t, ""), ns, want)
	if err != nil || rec.State != client.StateCompleted {
		t.Fatalf("record under %q: got %+v, %v; want it completed", want, rec, err)
	}
}

// checkNotStored fails unless keystore holds nothing under these keys.
func checkNotStored(t *testing.T, kc *client.Client, ns string, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if rec, err := kc.Get(withKey(t, ""), ns, k); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("record under %q: got %+v, %v; want none", k, rec, err)
		}
	}
}

// testCA issues certificates for a TLS server and its clients.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	next atomic.Int64
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, pool: x509.NewCertPool()}
	ca.pool.AddCert(cert)
	ca.next.Store(1)
	return ca
}

// issue returns a certificate for cn, for a server (with DNS name cn) or
// a client.
func (ca *testCA) issue(t *testing.T, cn string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.next.Add(1)),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{cn}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

const tlsServerName = "server.test"

// serveTLS starts a protected gRPC server over bufconn that verifies the
// client certificates ca issued, when a client presents one. dial
// connects to it as the client of certificate cn ("": none).
func serveTLS(t *testing.T, kc *client.Client, svc *fakeService, ca *testCA, opts ...grpcidem.Option) (dial func(cn string) *env) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{ca.issue(t, tlsServerName, true)},
		ClientCAs:    ca.pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		MinVersion:   tls.VersionTLS13,
	})
	srv := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(grpcidem.UnaryServerInterceptor(kc, opts...)))
	healthpb.RegisterHealthServer(srv, svc)
	keystorev1.RegisterClusterServiceServer(srv, svc)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return func(cn string) *env {
		cfg := &tls.Config{RootCAs: ca.pool, ServerName: tlsServerName, MinVersion: tls.VersionTLS13}
		if cn != "" {
			cfg.Certificates = []tls.Certificate{ca.issue(t, cn, false)}
		}
		conn, err := grpc.NewClient("passthrough:///bufconn",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return &env{svc: svc, health: healthpb.NewHealthClient(conn), cluster: keystorev1.NewClusterServiceClient(conn)}
	}
}

func TestDefaultScope(t *testing.T) {
	ca := newTestCA(t)
	state := func(cn string, verified bool) credentials.AuthInfo {
		leaf := ca.issue(t, cn, false).Leaf
		cs := tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true, PeerCertificates: []*x509.Certificate{leaf}}
		if verified {
			var err error
			cs.VerifiedChains, err = leaf.Verify(x509.VerifyOptions{Roots: ca.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			if err != nil {
				t.Fatal(err)
			}
		}
		return credentials.TLSInfo{State: cs}
	}
	alice, unverified, noCN := state("alice", true), state("mallory", false), state("", true)
	for _, tc := range []struct {
		name   string
		auth   credentials.AuthInfo
		md     []string
		want   string
		wantOK bool
	}{
		{"Nothing", nil, nil, "", false},
		{"Authorization", nil, []string{"Bearer s3cret"}, authorizationScope("Bearer s3cret"), true},
		{"AuthorizationTwice", nil, []string{"Bearer a", "Bearer b"}, authorizationScope("Bearer a\nBearer b"), true},
		{"BlankAuthorization", nil, []string{" "}, "", false},
		{"VerifiedCert", alice, nil, "x509-cn:alice", true},
		{"VerifiedCertWinsOverAuthorization", alice, []string{"Bearer s3cret"}, "x509-cn:alice", true},
		{"UnverifiedCertIsNoOne", unverified, nil, "", false},
		{"UnverifiedCertThenAuthorization", unverified, []string{"Bearer s3cret"}, authorizationScope("Bearer s3cret"), true},
		{"CertWithoutCommonName", noCN, []string{"Bearer s3cret"}, authorizationScope("Bearer s3cret"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: tc.auth})
			if tc.md != nil {
				ctx = metadata.NewIncomingContext(ctx, metadata.MD{"authorization": tc.md})
			}
			got, ok := grpcidem.DefaultScope(ctx)
			if got != tc.want || ok != tc.wantOK {
				t.Fatalf("DefaultScope: got %q, %v; want %q, %v", got, ok, tc.want, tc.wantOK)
			}
			if strings.Contains(got, "s3cret") {
				t.Fatalf("DefaultScope: %q holds the credential", got)
			}
		})
	}
}

// Two callers with different authorization metadata send the same key and
// request: each gets its own run, and its own replays.
func testScopeAuthorization(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod))
	alice, aliceReplay := e.callStatus(t, "k", "Bearer alice-s3cret")
	bob, bobReplay := e.callStatus(t, "k", "Bearer bob-s3cret")
	aliceAgain, aliceAgainReplay := e.callStatus(t, "k", "Bearer alice-s3cret")
	bobAgain, bobAgainReplay := e.callStatus(t, "k", "Bearer bob-s3cret")
	if alice != 1 || aliceReplay || bob != 2 || bobReplay {
		t.Fatalf("first calls: alice run %d (replay %v), bob run %d (replay %v); want 1 and 2, fresh", alice, aliceReplay, bob, bobReplay)
	}
	if aliceAgain != 1 || !aliceAgainReplay || bobAgain != 2 || !bobAgainReplay {
		t.Fatalf("retries: alice run %d (replay %v), bob run %d (replay %v); want each one's own outcome replayed",
			aliceAgain, aliceAgainReplay, bobAgain, bobAgainReplay)
	}
	if n := e.svc.Runs("status"); n != 2 {
		t.Fatalf("handler ran %d times; want 2", n)
	}
	checkStored(t, kc, ns, scopedKey(authorizationScope("Bearer alice-s3cret"), "k"))
	checkStored(t, kc, ns, scopedKey(authorizationScope("Bearer bob-s3cret"), "k"))
	checkNotStored(t, kc, ns, "k", anonymousKey("k"))
}

// Two verified client certificates are two callers, whatever their
// authorization metadata; a TLS client without a certificate is
// anonymous.
func testScopeClientCert(t *testing.T, kc *client.Client, ns string) {
	svc := newFakeService()
	dial := serveTLS(t, kc, svc, newTestCA(t), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod))
	alice, bob, aliceRenewed, nobody := dial("alice"), dial("bob"), dial("alice"), dial("")
	first, _ := alice.callStatus(t, "k", "Bearer shared")
	other, otherReplay := bob.callStatus(t, "k", "Bearer shared")
	again, againReplay := aliceRenewed.callStatus(t, "k", "Bearer another")
	if first != 1 || other != 2 || otherReplay || again != 1 || !againReplay {
		t.Fatalf("alice run %d, bob run %d (replay %v), alice's new certificate run %d (replay %v); want 1, 2 fresh, 1 replayed",
			first, other, otherReplay, again, againReplay)
	}
	checkStored(t, kc, ns, scopedKey("x509-cn:alice", "k"))
	checkStored(t, kc, ns, scopedKey("x509-cn:bob", "k"))
	if term, replay := nobody.callStatus(t, "k", ""); term != 3 || replay {
		t.Fatalf("TLS client without a certificate: run %d (replay %v); want run 3, fresh", term, replay)
	}
	checkStored(t, kc, ns, anonymousKey("k"))
	if n := svc.Runs("status"); n != 3 {
		t.Fatalf("handler ran %d times; want 3", n)
	}
}

// Callers with no identity share the anonymous scope, which meets no
// identified caller's keys, even when a key is made to look like one.
func testAnonymousScope(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod))
	one, oneReplay := e.callStatus(t, "k", "")
	two, twoReplay := e.callStatus(t, "k", "")
	if one != 1 || oneReplay || two != 1 || !twoReplay {
		t.Fatalf("anonymous callers: run %d (replay %v), then run %d (replay %v); want one run, replayed", one, oneReplay, two, twoReplay)
	}
	checkStored(t, kc, ns, anonymousKey("k"))
	checkNotStored(t, kc, ns, "k")
	if term, replay := e.callStatus(t, "k", "Bearer alice"); term != 2 || replay {
		t.Fatalf("identified caller after anonymous ones: run %d (replay %v); want run 2, fresh", term, replay)
	}
	// An anonymous caller sending alice's keystore key, or the anonymous
	// prefix, reaches neither her record nor the anonymous one.
	for i, k := range []string{scopedKey(authorizationScope("Bearer alice"), "k"), anonymousKey("k")} {
		if term, replay := e.callStatus(t, k, ""); term != uint64(3+i) || replay {
			t.Fatalf("anonymous caller with key %q: run %d (replay %v); want run %d, fresh", k, term, replay, 3+i)
		}
	}
}

// RequireScope fails calls with a key and no identity with
// UNAUTHENTICATED, whatever their key.
func testRequireScope(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod), grpcidem.RequireScope())
	for _, ctx := range []context.Context{
		withKey(t, "k"),
		withKey(t, strings.Repeat("k", 300)),
		withAuth(withKey(t, "k"), " "),
	} {
		if _, err := e.cluster.Status(ctx, &keystorev1.StatusRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("call with a key and no identity: got %v; want UNAUTHENTICATED", err)
		}
	}
	if n := e.svc.Runs("status"); n != 0 {
		t.Fatalf("handler ran %d times for unidentified callers; want 0", n)
	}
	checkNotStored(t, kc, ns, anonymousKey("k"))
	if term, _ := e.callStatus(t, "k", "Bearer alice"); term != 1 {
		t.Fatalf("identified caller: run %d; want 1", term)
	}
	// A call without a key uses no key, so no scope either...
	if _, err := e.cluster.Status(withKey(t, ""), &keystorev1.StatusRequest{}); err != nil {
		t.Fatalf("keyless unidentified call: %v; want it run unprotected", err)
	}
	// ... unless RequireKey: the caller is identified first.
	e = serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod), grpcidem.RequireScope(), grpcidem.RequireKey())
	if _, err := e.cluster.Status(withKey(t, ""), &keystorev1.StatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("keyless unidentified call with RequireKey: got %v; want UNAUTHENTICATED", err)
	}
}

// WithScope replaces DefaultScope.
func testWithScope(t *testing.T, kc *client.Client, ns string) {
	byTenant := func(ctx context.Context) (string, bool) {
		md, _ := metadata.FromIncomingContext(ctx)
		v := md.Get("x-tenant")
		if len(v) != 1 || v[0] == "" {
			return "", false
		}
		return v[0], true
	}
	svc := newFakeService()
	e := serve(t, kc, svc, grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod), grpcidem.WithScope(byTenant), grpcidem.RequireScope())
	call := func(tenant, auth string) (uint64, bool) {
		ctx := withAuth(withKey(t, "k"), auth)
		ctx = metadata.AppendToOutgoingContext(ctx, "x-tenant", tenant)
		var h metadata.MD
		resp, err := e.cluster.Status(ctx, &keystorev1.StatusRequest{}, grpc.Header(&h))
		if err != nil {
			t.Fatalf("tenant %s: %v", tenant, err)
		}
		return resp.GetTerm(), replayed(h)
	}
	// One tenant with two tokens is one caller; one token for two tenants
	// is two.
	t1, _ := call("t1", "Bearer old")
	t1Again, t1Replay := call("t1", "Bearer refreshed")
	t2, t2Replay := call("t2", "Bearer old")
	if t1 != 1 || t1Again != 1 || !t1Replay || t2 != 2 || t2Replay {
		t.Fatalf("t1 run %d, t1 again run %d (replay %v), t2 run %d (replay %v); want scopes by tenant", t1, t1Again, t1Replay, t2, t2Replay)
	}
	checkStored(t, kc, ns, scopedKey("t1", "k"))
	// The hook decides who is anonymous: authorization alone is no tenant.
	if _, err := e.cluster.Status(withAuth(withKey(t, "k"), "Bearer old"), &keystorev1.StatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no tenant: got %v; want UNAUTHENTICATED", err)
	}

	// A hook may fall back on DefaultScope.
	e = serve(t, kc, svc, grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod), grpcidem.WithScope(func(ctx context.Context) (string, bool) {
		if tenant, ok := byTenant(ctx); ok {
			return "tenant:" + tenant, true
		}
		return grpcidem.DefaultScope(ctx)
	}))
	if term, _ := e.callStatus(t, "k-fallback", "Bearer old"); term != 3 {
		t.Fatalf("fallback to DefaultScope: run %d; want 3", term)
	}
	checkStored(t, kc, ns, scopedKey(authorizationScope("Bearer old"), "k-fallback"))

	// ok with an empty scope is a broken hook: refuse rather than share.
	e = serve(t, kc, svc, grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod),
		grpcidem.WithScope(func(context.Context) (string, bool) { return "", true }))
	if _, err := e.cluster.Status(withKey(t, "k"), &keystorev1.StatusRequest{}); status.Code(err) != codes.Internal {
		t.Fatalf("empty scope: got %v; want INTERNAL", err)
	}
	if n := svc.Runs("status"); n != 3 {
		t.Fatalf("handler ran %d times; want 3", n)
	}
}

// WithoutScope puts every caller in the anonymous scope.
func testWithoutScope(t *testing.T, kc *client.Client, ns string) {
	svc := newFakeService()
	dial := serveTLS(t, kc, svc, newTestCA(t), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod), grpcidem.WithoutScope())
	alice, aliceReplay := dial("alice").callStatus(t, "k", "Bearer alice")
	bob, bobReplay := dial("bob").callStatus(t, "k", "Bearer bob")
	if alice != 1 || aliceReplay || bob != 1 || !bobReplay {
		t.Fatalf("alice run %d (replay %v), bob run %d (replay %v); want bob to get alice's outcome", alice, aliceReplay, bob, bobReplay)
	}
	checkStored(t, kc, ns, anonymousKey("k"))
}

// The longest key is MaxKeyLen bytes for every caller; a longer one fails
// with INVALID_ARGUMENT naming the limit.
func testKeyLimit(t *testing.T, kc *client.Client, ns string) {
	e := serve(t, kc, newFakeService(), grpcidem.WithNamespace(ns), grpcidem.WithMethods(statusMethod))
	if grpcidem.MaxKeyLen != 232 {
		t.Fatalf("MaxKeyLen = %d; want 232", grpcidem.MaxKeyLen)
	}
	longest := strings.Repeat("k", grpcidem.MaxKeyLen)
	for i, auth := range []string{"", "Bearer alice"} {
		if term, _ := e.callStatus(t, longest, auth); term != uint64(i+1) {
			t.Fatalf("authorization %q, %d-byte key: run %d; want %d", auth, len(longest), term, i+1)
		}
		ctx := withKey(t, "k"+longest)
		if auth != "" {
			ctx = withAuth(ctx, auth)
		}
		_, err := e.cluster.Status(ctx, &keystorev1.StatusRequest{})
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "at most 232 bytes") {
			t.Fatalf("authorization %q, 233-byte key: got %v; want INVALID_ARGUMENT naming the 232-byte limit", auth, err)
		}
	}
}

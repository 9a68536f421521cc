package auth

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Tokens of testPolicy's principals.
const (
	tokPayments = "payments-0123456789abcdef0123456789abcdef"
	tokOps      = "ops-0123456789abcdef0123456789abcdef"
	tokAuditor  = "auditor-0123456789abcdef0123456789abcdef"
	tokUnknown  = "unknown-0123456789abcdef0123456789abcdef"
)

// testPolicy returns a policy with a token principal for two namespaces, a
// cert principal, a "*" admin (its hash in upper case) and an admin with no
// namespaces.
func testPolicy() string {
	return fmt.Sprintf(`# keystore authorization policy
principals:
  - name: payments-service
    token_sha256: %q
    namespaces: [payments, refunds]
  - name: orders-service
    cert_cn: orders
    namespaces: ["orders"]
  - name: ops
    token_sha256: %q
    namespaces: ["*"]
    admin: true
  - name: auditor
    token_sha256: %s
    admin: true
`, HashToken(tokPayments), strings.ToUpper(HashToken(tokOps)), HashToken(tokAuditor))
}

// writePolicy replaces dir/policy.yaml with contents, atomically, and
// returns its path.
func writePolicy(t *testing.T, dir, contents string) string {
	t.Helper()
	path := filepath.Join(dir, "policy.yaml")
	tmp, err := os.CreateTemp(dir, "policy-*.tmp")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmp.WriteString(contents); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
	return path
}

// syncBuffer is a bytes.Buffer safe for concurrent use, for capturing logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newTestAuthorizer returns an Authorizer for testPolicy in a fresh
// directory, its policy path, and the buffer its debug-level logs go to.
func newTestAuthorizer(t *testing.T) (*Authorizer, string, *syncBuffer) {
	t.Helper()
	path := writePolicy(t, t.TempDir(), testPolicy())
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := NewAuthorizer(path, logger)
	if err != nil {
		t.Fatalf("NewAuthorizer: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	})
	return a, path, logs
}

// verifiedPeer is a peer whose TLS handshake verified a certificate with
// CommonName cn.
func verifiedPeer(cn string) *peer.Peer {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
	return &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
		PeerCertificates: []*x509.Certificate{cert},
		VerifiedChains:   [][]*x509.Certificate{{cert}},
	}}}
}

// unverifiedPeer is a peer that presented a certificate with CommonName cn
// which the server did not verify.
func unverifiedPeer(cn string) *peer.Peer {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
	return &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
		PeerCertificates: []*x509.Certificate{cert},
	}}}
}

// otherAuthInfo is an AuthInfo of a transport other than TLS.
type otherAuthInfo struct{}

func (otherAuthInfo) AuthType() string { return "other" }

// callContext returns an incoming call context with the given
// authorization values and peer.
func callContext(auth []string, p *peer.Peer) context.Context {
	ctx := context.Background()
	if auth != nil {
		md := metadata.MD{}
		for _, v := range auth {
			md.Append("authorization", v)
		}
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	if p != nil {
		ctx = peer.NewContext(ctx, p)
	}
	return ctx
}

func TestAuthenticate(t *testing.T) {
	a, _, logs := newTestAuthorizer(t)
	info := verifiedPeer("orders").AuthInfo.(credentials.TLSInfo)
	ptrPeer := &peer.Peer{AuthInfo: &info}

	tests := []struct {
		name     string
		auth     []string
		peer     *peer.Peer
		want     string // principal name; "" when an error is expected
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "token", auth: []string{"Bearer " + tokPayments}, want: "payments-service"},
		{name: "scheme lower case", auth: []string{"bearer " + tokPayments}, want: "payments-service"},
		{name: "scheme upper case", auth: []string{"BEARER " + tokPayments}, want: "payments-service"},
		{name: "extra spaces", auth: []string{"  Bearer   " + tokPayments + " "}, want: "payments-service"},
		{name: "upper-case hash in file", auth: []string{"Bearer " + tokOps}, want: "ops"},
		{name: "admin without namespaces", auth: []string{"Bearer " + tokAuditor}, want: "auditor"},
		{name: "no credentials", wantCode: codes.Unauthenticated, wantMsg: msgMissing},
		{name: "empty metadata", auth: []string{}, wantCode: codes.Unauthenticated, wantMsg: msgMissing},
		{name: "bearer without token", auth: []string{"Bearer"}, wantCode: codes.Unauthenticated, wantMsg: msgMalformed},
		{name: "bearer with blank token", auth: []string{"Bearer   "}, wantCode: codes.Unauthenticated, wantMsg: msgMalformed},
		{name: "basic scheme", auth: []string{"Basic x"}, wantCode: codes.Unauthenticated, wantMsg: msgMalformed},
		{name: "token without scheme", auth: []string{tokPayments}, wantCode: codes.Unauthenticated, wantMsg: msgMalformed},
		{name: "empty value", auth: []string{""}, wantCode: codes.Unauthenticated, wantMsg: msgMalformed},
		{name: "two values", auth: []string{"Bearer " + tokPayments, "Bearer " + tokPayments}, wantCode: codes.Unauthenticated, wantMsg: msgMalformed},
		{name: "unknown token", auth: []string{"Bearer " + tokUnknown}, wantCode: codes.Unauthenticated, wantMsg: msgUnknown},
		{name: "token of a hash's hex", auth: []string{"Bearer " + HashToken(tokPayments)}, wantCode: codes.Unauthenticated, wantMsg: msgUnknown},
		{name: "verified cert", peer: verifiedPeer("orders"), want: "orders-service"},
		{name: "verified cert, TLSInfo pointer", peer: ptrPeer, want: "orders-service"},
		{name: "verified cert, unknown CN", peer: verifiedPeer("billing"), wantCode: codes.Unauthenticated, wantMsg: msgUnknown},
		{name: "verified cert, empty CN", peer: verifiedPeer(""), wantCode: codes.Unauthenticated, wantMsg: msgUnknown},
		{name: "unverified cert", peer: unverifiedPeer("orders"), wantCode: codes.Unauthenticated, wantMsg: msgMissing},
		{name: "peer without TLS", peer: &peer.Peer{AuthInfo: otherAuthInfo{}}, wantCode: codes.Unauthenticated, wantMsg: msgMissing},
		{name: "peer without AuthInfo", peer: &peer.Peer{}, wantCode: codes.Unauthenticated, wantMsg: msgMissing},
		{name: "token wins over cert", auth: []string{"Bearer " + tokPayments}, peer: verifiedPeer("orders"), want: "payments-service"},
		{name: "unknown token, good cert", auth: []string{"Bearer " + tokUnknown}, peer: verifiedPeer("orders"), wantCode: codes.Unauthenticated, wantMsg: msgUnknown},
		{name: "malformed header, good cert", auth: []string{"Basic x"}, peer: verifiedPeer("orders"), wantCode: codes.Unauthenticated, wantMsg: msgMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := a.Authenticate(callContext(tt.auth, tt.peer))
			if tt.want != "" {
				if err != nil {
					t.Fatalf("Authenticate: %v; want principal %q", err, tt.want)
				}
				if p.Name() != tt.want {
					t.Fatalf("Authenticate = %q; want %q", p.Name(), tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Authenticate = %q; want %v error", p.Name(), tt.wantCode)
			}
			st, _ := status.FromError(err)
			if st.Code() != tt.wantCode || st.Message() != tt.wantMsg {
				t.Errorf("Authenticate error = %v %q; want %v %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			for _, tok := range []string{tokPayments, tokUnknown} {
				if strings.Contains(err.Error(), tok) {
					t.Errorf("error %q echoes the token", err)
				}
			}
		})
	}
	if strings.Contains(logs.String(), tokPayments) || strings.Contains(logs.String(), tokUnknown) {
		t.Errorf("logs contain a token:\n%s", logs)
	}
}

func TestNewAuthorizerErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewAuthorizer(filepath.Join(dir, "missing.yaml"), nil); err == nil {
		t.Error("NewAuthorizer(missing file) succeeded; want error")
	}
	bad := writePolicy(t, dir, "principals: []\n")
	if _, err := NewAuthorizer(bad, nil); err == nil {
		t.Error("NewAuthorizer(bad policy) succeeded; want error")
	}
}

// principalOf returns the name token authenticates as, or "" if it does not.
func principalOf(a *Authorizer, token string) string {
	p, err := a.Authenticate(callContext([]string{"Bearer " + token}, nil))
	if err != nil {
		return ""
	}
	return p.Name()
}

// replacementPolicy grants tokUnknown, and nothing else.
func replacementPolicy() string {
	return "principals:\n  - {name: newcomer, token_sha256: " + HashToken(tokUnknown) + ", namespaces: [payments]}\n"
}

func TestReload(t *testing.T) {
	a, path, logs := newTestAuthorizer(t)
	dir := filepath.Dir(path)

	steps := []struct {
		name     string
		contents string // "" removes the file
		wantErr  bool
		// Who tokPayments and tokUnknown authenticate as after the step.
		payments, unknown string
	}{
		{"bad policy keeps the old one", "principals:\n  - {name: a}\n", true, "payments-service", ""},
		{"not YAML keeps the old one", "principals: [\n", true, "payments-service", ""},
		{"missing file keeps the old one", "", true, "payments-service", ""},
		{"good policy takes effect", replacementPolicy(), false, "", "newcomer"},
		{"same policy again", replacementPolicy(), false, "", "newcomer"},
		{"back to the first", testPolicy(), false, "payments-service", ""},
	}
	for _, s := range steps {
		if s.contents == "" {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		} else {
			writePolicy(t, dir, s.contents)
		}
		err := a.Reload()
		if (err != nil) != s.wantErr {
			t.Errorf("%s: Reload() = %v; want error: %v", s.name, err, s.wantErr)
		}
		if got := principalOf(a, tokPayments); got != s.payments {
			t.Errorf("%s: payments token authenticates as %q; want %q", s.name, got, s.payments)
		}
		if got := principalOf(a, tokUnknown); got != s.unknown {
			t.Errorf("%s: unknown token authenticates as %q; want %q", s.name, got, s.unknown)
		}
	}
	if got := strings.Count(logs.String(), "reload failed"); got != 3 {
		t.Errorf("logged %d reload failures; want 3", got)
	}
	if !strings.Contains(logs.String(), "principals=1") || !strings.Contains(logs.String(), "principals=4") {
		t.Errorf("logs lack the principal counts:\n%s", logs)
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatch(t *testing.T) {
	a, path, logs := newTestAuthorizer(t)
	dir := filepath.Dir(path)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Watch(ctx, 10*time.Millisecond)
	}()
	defer func() {
		cancel()
		<-done
	}()

	writePolicy(t, dir, replacementPolicy())
	waitFor(t, "the new policy", func() bool { return principalOf(a, tokUnknown) == "newcomer" })
	if got := principalOf(a, tokPayments); got != "" {
		t.Errorf("payments token authenticates as %q after the change; want not at all", got)
	}

	// A bad file is logged once and ignored.
	writePolicy(t, dir, "principals: []\n")
	waitFor(t, "the reload failure", func() bool { return strings.Contains(logs.String(), "reload failed") })
	time.Sleep(100 * time.Millisecond) // several more polls of the same bad contents
	if got := strings.Count(logs.String(), "reload failed"); got != 1 {
		t.Errorf("logged %d reload failures of one bad file; want 1", got)
	}
	if got := principalOf(a, tokUnknown); got != "newcomer" {
		t.Errorf("unknown token authenticates as %q after a bad file; want newcomer", got)
	}

	// A missing file is logged once and ignored.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the read failure", func() bool { return strings.Contains(logs.String(), "unreadable") })
	time.Sleep(100 * time.Millisecond)
	if got := strings.Count(logs.String(), "unreadable"); got != 1 {
		t.Errorf("logged %d read failures of one missing file; want 1", got)
	}

	writePolicy(t, dir, testPolicy())
	waitFor(t, "the first policy again", func() bool { return principalOf(a, tokPayments) == "payments-service" })
}

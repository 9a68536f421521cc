package httpidem_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/client/httpidem"
)

// The keystore key formats, as the package documents them.

func b64sha256(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func scopedKey(scope, key string) string { return b64sha256(scope)[:22] + ":" + key }

func anonymousKey(key string) string { return "-:" + key }

func authorizationScope(v string) string { return "authorization:" + b64sha256(v) }

// testCA issues client certificates, verified as a TLS server would.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
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
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

var serial atomic.Int64

// tlsState returns the state of a TLS connection whose client presented
// a certificate for cn; verified says whether the server verified it.
func (ca *testCA) tlsState(t *testing.T, cn string, verified bool) *tls.ConnectionState {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1) + 1),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"tenants"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	cs := &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true, PeerCertificates: []*x509.Certificate{leaf}}
	if verified {
		cs.VerifiedChains, err = leaf.Verify(x509.VerifyOptions{Roots: ca.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			t.Fatal(err)
		}
	}
	return cs
}

// serveDirect serves one request through h, without a network; tls is
// the request's TLS state (nil: plain HTTP). hdr are header name, value
// pairs.
func serveDirect(h http.Handler, cs *tls.ConnectionState, key, body string, hdr ...string) result {
	req := httptest.NewRequest("POST", "/orders", strings.NewReader(body))
	req.TLS = cs
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	rw := httptest.NewRecorder()
	h.ServeHTTP(rw, req)
	return result{rw.Code, rw.Header(), rw.Body.String()}
}

// checkStored fails unless keystore holds a completed record under the
// keystore key want.
func checkStored(t *testing.T, e *env, want string) {
	t.Helper()
	rec, err := e.c.Get(ctxT(t, 5*time.Second), ns, want)
	if err != nil || rec.State != client.StateCompleted {
		t.Fatalf("record under %q: got %+v, %v; want it completed", want, rec, err)
	}
}

// checkNotStored fails unless keystore holds nothing under these keys.
func checkNotStored(t *testing.T, e *env, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if rec, err := e.c.Get(ctxT(t, 5*time.Second), ns, k); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("record under %q: got %+v, %v; want none", k, rec, err)
		}
	}
}

func TestDefaultScope(t *testing.T) {
	ca := newTestCA(t)
	alice := ca.tlsState(t, "alice", true)
	unverified := ca.tlsState(t, "mallory", false)
	noCN := ca.tlsState(t, "", true)
	for _, tc := range []struct {
		name   string
		tls    *tls.ConnectionState
		auth   []string
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
			req := httptest.NewRequest("POST", "/", nil)
			req.TLS = tc.tls
			req.Header["Authorization"] = tc.auth
			got, ok := httpidem.DefaultScope(req)
			if got != tc.want || ok != tc.wantOK {
				t.Fatalf("DefaultScope: got %q, %v; want %q, %v", got, ok, tc.want, tc.wantOK)
			}
			if strings.Contains(got, "s3cret") {
				t.Fatalf("DefaultScope: %q holds the credential", got)
			}
		})
	}
}

// Two callers with different Authorization headers send the same key and
// body: each gets its own run, and its own replays.
func testScopeAuthorization(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated))
	key := t.Name()
	alice := do(t, "POST", url, key, `{"amount":10}`, "Authorization", "Bearer alice-s3cret")
	bob := do(t, "POST", url, key, `{"amount":10}`, "Authorization", "Bearer bob-s3cret")
	aliceAgain := do(t, "POST", url, key, `{"amount":10}`, "Authorization", "Bearer alice-s3cret")
	bobAgain := do(t, "POST", url, key, `{"amount":10}`, "Authorization", "Bearer bob-s3cret")
	if alice.body != "run 1" || alice.replayed() || bob.body != "run 2" || bob.replayed() {
		t.Fatalf("first requests: alice %q (replayed %v), bob %q (replayed %v); want run 1 and run 2, fresh",
			alice.body, alice.replayed(), bob.body, bob.replayed())
	}
	if aliceAgain.body != "run 1" || !aliceAgain.replayed() || bobAgain.body != "run 2" || !bobAgain.replayed() {
		t.Fatalf("retries: alice %q (replayed %v), bob %q (replayed %v); want each one's own response replayed",
			aliceAgain.body, aliceAgain.replayed(), bobAgain.body, bobAgain.replayed())
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times; want 2", n)
	}
	// Stored under each caller's hashed scope; the credential is nowhere.
	aliceKey := scopedKey(authorizationScope("Bearer alice-s3cret"), key)
	checkStored(t, e, aliceKey)
	checkStored(t, e, scopedKey(authorizationScope("Bearer bob-s3cret"), key))
	checkNotStored(t, e, key, anonymousKey(key))
	rec, err := e.c.Get(ctxT(t, 5*time.Second), ns, aliceKey)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(rec); strings.Contains(string(b), "s3cret") {
		t.Fatalf("stored record %s holds the Authorization value", b)
	}
}

// Two verified client certificates are two callers, whatever their
// Authorization headers; an unverified one names no one.
func testScopeClientCert(t *testing.T, e *env) {
	ca := newTestCA(t)
	alice, bob := ca.tlsState(t, "alice", true), ca.tlsState(t, "bob", true)
	aliceRenewed := ca.tlsState(t, "alice", true) // a new certificate, the same name
	var runs atomic.Int32
	h := httpidem.Middleware(e.c, httpidem.WithNamespace(ns))(counting(&runs, http.StatusCreated))
	key := t.Name()
	first := serveDirect(h, alice, key, "{}", "Authorization", "Bearer shared")
	other := serveDirect(h, bob, key, "{}", "Authorization", "Bearer shared")
	again := serveDirect(h, aliceRenewed, key, "{}", "Authorization", "Bearer another")
	if first.body != "run 1" || other.body != "run 2" || other.replayed() || again.body != "run 1" || !again.replayed() {
		t.Fatalf("alice %q, bob %q (replayed %v), alice again %q (replayed %v); want run 1, run 2 fresh, run 1 replayed",
			first.body, other.body, other.replayed(), again.body, again.replayed())
	}
	checkStored(t, e, scopedKey("x509-cn:alice", key))
	checkStored(t, e, scopedKey("x509-cn:bob", key))

	// A certificate the server did not verify is no identity: the request
	// is anonymous, and shares the anonymous caller's key.
	anon := serveDirect(h, nil, key+"-anon", "{}")
	unverified := serveDirect(h, ca.tlsState(t, "alice", false), key+"-anon", "{}")
	if anon.body != "run 3" || unverified.body != "run 3" || !unverified.replayed() {
		t.Fatalf("anonymous %q, unverified certificate %q (replayed %v); want the anonymous run replayed",
			anon.body, unverified.body, unverified.replayed())
	}
	if n := runs.Load(); n != 3 {
		t.Fatalf("handler ran %d times; want 3", n)
	}
}

// Callers with no identity share the anonymous scope, which meets no
// identified caller's keys, even when a key is made to look like one.
func testAnonymousScope(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated))
	key := t.Name()
	one := do(t, "POST", url, key, "{}")
	two := do(t, "POST", url, key, "{}")
	if one.body != "run 1" || one.replayed() || two.body != "run 1" || !two.replayed() {
		t.Fatalf("anonymous callers: %q, then %q (replayed %v); want one run, replayed", one.body, two.body, two.replayed())
	}
	checkStored(t, e, anonymousKey(key))
	checkNotStored(t, e, key)

	alice := do(t, "POST", url, key, "{}", "Authorization", "Bearer alice")
	if alice.body != "run 2" || alice.replayed() {
		t.Fatalf("identified caller after anonymous ones: got %q (replayed %v); want run 2, fresh", alice.body, alice.replayed())
	}
	// An anonymous caller sending alice's keystore key, or the anonymous
	// prefix, reaches neither her record nor the anonymous one.
	for i, k := range []string{scopedKey(authorizationScope("Bearer alice"), key), anonymousKey(key)} {
		r := do(t, "POST", url, k, "{}")
		if want := "run " + strconv.Itoa(3+i); r.body != want || r.replayed() {
			t.Fatalf("anonymous caller with key %q: got %q (replayed %v); want %s, fresh", k, r.body, r.replayed(), want)
		}
	}
}

// RequireScope answers callers with no identity 401, whatever their key.
func testRequireScope(t *testing.T, e *env) {
	var runs atomic.Int32
	outer := func(next http.Handler) http.Handler { // an authentication layer's challenge
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="orders"`)
			next.ServeHTTP(w, r)
		})
	}
	h := outer(httpidem.Middleware(e.c, httpidem.WithNamespace(ns), httpidem.RequireScope())(counting(&runs, http.StatusCreated)))
	key := t.Name()
	for _, k := range []string{key, "", strings.Repeat("k", 300)} {
		r := serveDirect(h, nil, k, "{}")
		checkProblem(t, r, http.StatusUnauthorized, httpidem.ProblemUnauthenticated)
		if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="orders"` {
			t.Fatalf("WWW-Authenticate: got %q; want the outer handler's challenge kept", got)
		}
	}
	checkProblem(t, serveDirect(h, nil, key, "{}", "Authorization", " "), http.StatusUnauthorized, httpidem.ProblemUnauthenticated)
	if n := runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times for unidentified callers; want 0", n)
	}
	checkNotStored(t, e, anonymousKey(key))
	if r := serveDirect(h, nil, key, "{}", "Authorization", "Bearer alice"); r.status != http.StatusCreated {
		t.Fatalf("identified caller: got %d %s; want 201", r.status, r.body)
	}
	// A request without a key that WithKeyRequired(false) lets through
	// uses no key, so no scope either.
	h = httpidem.Middleware(e.c, httpidem.WithNamespace(ns), httpidem.RequireScope(), httpidem.WithKeyRequired(false))(counting(&runs, http.StatusCreated))
	if r := serveDirect(h, nil, "", "{}"); r.status != http.StatusCreated {
		t.Fatalf("keyless unidentified request with WithKeyRequired(false): got %d %s; want the handler's 201", r.status, r.body)
	}
	checkProblem(t, serveDirect(h, nil, key, "{}"), http.StatusUnauthorized, httpidem.ProblemUnauthenticated)
}

// WithScope replaces DefaultScope.
func testWithScope(t *testing.T, e *env) {
	var runs atomic.Int32
	byAccount := func(r *http.Request) (string, bool) {
		a := r.Header.Get("X-Account")
		return a, a != ""
	}
	url := e.serve(t, counting(&runs, http.StatusCreated), httpidem.WithScope(byAccount), httpidem.RequireScope())
	key := t.Name()
	// One account with two tokens is one caller; one token for two
	// accounts is two.
	a1 := do(t, "POST", url, key, "{}", "X-Account", "acct-1", "Authorization", "Bearer old")
	a1Again := do(t, "POST", url, key, "{}", "X-Account", "acct-1", "Authorization", "Bearer refreshed")
	a2 := do(t, "POST", url, key, "{}", "X-Account", "acct-2", "Authorization", "Bearer old")
	if a1.body != "run 1" || a1Again.body != "run 1" || !a1Again.replayed() || a2.body != "run 2" || a2.replayed() {
		t.Fatalf("acct-1 %q, acct-1 again %q (replayed %v), acct-2 %q (replayed %v); want scopes by account",
			a1.body, a1Again.body, a1Again.replayed(), a2.body, a2.replayed())
	}
	checkStored(t, e, scopedKey("acct-1", key))
	// The hook decides who is anonymous: an Authorization header alone is
	// no account here.
	checkProblem(t, do(t, "POST", url, key, "{}", "Authorization", "Bearer old"), http.StatusUnauthorized, httpidem.ProblemUnauthenticated)

	// A hook may fall back on DefaultScope.
	url = e.serve(t, counting(&runs, http.StatusCreated), httpidem.WithScope(func(r *http.Request) (string, bool) {
		if a, ok := byAccount(r); ok {
			return "account:" + a, true
		}
		return httpidem.DefaultScope(r)
	}))
	if r := do(t, "POST", url, key+"-fallback", "{}", "Authorization", "Bearer old"); r.body != "run 3" {
		t.Fatalf("fallback to DefaultScope: got %q; want run 3", r.body)
	}
	checkStored(t, e, scopedKey(authorizationScope("Bearer old"), key+"-fallback"))

	// ok with an empty scope is a broken hook: refuse rather than share.
	url = e.serve(t, counting(&runs, http.StatusCreated), httpidem.WithScope(func(*http.Request) (string, bool) { return "", true }))
	checkProblem(t, do(t, "POST", url, key, "{}"), http.StatusInternalServerError, httpidem.ProblemInternal)
	if n := runs.Load(); n != 3 {
		t.Fatalf("handler ran %d times; want 3", n)
	}
}

// WithoutScope puts every caller in the anonymous scope.
func testWithoutScope(t *testing.T, e *env) {
	ca := newTestCA(t)
	var runs atomic.Int32
	h := httpidem.Middleware(e.c, httpidem.WithNamespace(ns), httpidem.WithoutScope())(counting(&runs, http.StatusCreated))
	key := t.Name()
	alice := serveDirect(h, nil, key, "{}", "Authorization", "Bearer alice")
	bob := serveDirect(h, ca.tlsState(t, "bob", true), key, "{}", "Authorization", "Bearer bob")
	if alice.body != "run 1" || bob.body != "run 1" || !bob.replayed() {
		t.Fatalf("alice %q, bob %q (replayed %v); want bob to get alice's response", alice.body, bob.body, bob.replayed())
	}
	checkStored(t, e, anonymousKey(key))
}

// The longest key is MaxKeyLen bytes for every caller, and a longer one
// is answered 400 naming the limit.
func testKeyLimit(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated))
	if httpidem.MaxKeyLen != 232 {
		t.Fatalf("MaxKeyLen = %d; want 232", httpidem.MaxKeyLen)
	}
	for _, caller := range [][]string{nil, {"Authorization", "Bearer alice"}} {
		longest := strings.Repeat("k", httpidem.MaxKeyLen-len(t.Name())) + t.Name()
		if r := do(t, "POST", url, longest, "{}", caller...); r.status != http.StatusCreated {
			t.Fatalf("caller %q, %d-byte key: got %d %s; want 201", caller, len(longest), r.status, r.body)
		}
		r := do(t, "POST", url, "k"+longest, "{}", caller...)
		checkProblem(t, r, http.StatusBadRequest, httpidem.ProblemKeyInvalid)
		var p struct{ Detail string }
		if err := json.Unmarshal([]byte(r.body), &p); err != nil || !strings.Contains(p.Detail, "1-232 bytes") {
			t.Fatalf("caller %q, 233-byte key: detail %q; want it to name the 1-232 bytes limit", caller, p.Detail)
		}
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times; want 2", n)
	}
}

// testKeyScope: the deprecated WithKeyScope is WithScope with an empty
// scope for no identity.
func testKeyScope(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated),
		httpidem.WithKeyScope(func(r *http.Request) string { return r.Header.Get("X-Account") }))
	key := t.Name()
	alice := do(t, "POST", url, key, "{}", "X-Account", "alice")
	bob := do(t, "POST", url, key, "{}", "X-Account", "bob")
	aliceAgain := do(t, "POST", url, key, "{}", "X-Account", "alice")
	if alice.body != "run 1" || bob.body != "run 2" || bob.replayed() || aliceAgain.body != "run 1" || !aliceAgain.replayed() {
		t.Fatalf("scoped keys: alice %q, bob %q (replayed %v), alice again %q; want separate runs per account",
			alice.body, bob.body, bob.replayed(), aliceAgain.body)
	}
	checkStored(t, e, scopedKey("alice", key))
	// No account is the anonymous scope, whatever the Authorization.
	if r := do(t, "POST", url, key, "{}", "Authorization", "Bearer carol"); r.body != "run 3" {
		t.Fatalf("no account: got %q; want run 3", r.body)
	}
	checkStored(t, e, anonymousKey(key))
	// Scopes are hashed, so any scope fits.
	url = e.serve(t, counting(&runs, http.StatusCreated),
		httpidem.WithKeyScope(func(r *http.Request) string { return strings.Repeat("s", 300) }))
	if r := do(t, "POST", url, key, "{}"); r.body != "run 4" {
		t.Fatalf("300-byte scope: got %d %q; want run 4", r.status, r.body)
	}
}

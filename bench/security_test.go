package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeTestCert writes a self-signed certificate and its key under dir and
// returns their paths.
func writeTestCert(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bench"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func TestSecurityFlagsLoad(t *testing.T) {
	dir := t.TempDir()
	crt, key := writeTestCert(t, dir)
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("  s3cret \nsecond line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		f         securityFlags
		backend   string
		wantErr   string
		wantTLS   string
		wantAuth  string
		wantToken string
	}{
		{name: "none", backend: "redis"},
		{name: "server TLS", f: securityFlags{caFile: crt}, backend: "etcd", wantTLS: "server"},
		{name: "mutual TLS", f: securityFlags{caFile: crt, certFile: crt, keyFile: key}, backend: "etcd", wantTLS: "mutual"},
		{name: "mutual TLS and token", f: securityFlags{caFile: crt, certFile: crt, keyFile: key, tokenFile: token}, backend: "keystore",
			wantTLS: "mutual", wantAuth: "token", wantToken: "s3cret"},
		{name: "token without TLS", f: securityFlags{tokenFile: token}, backend: "keystore", wantErr: "need -tls-ca"},
		{name: "token for etcd", f: securityFlags{caFile: crt, tokenFile: token}, backend: "etcd", wantErr: "keystore only"},
		{name: "TLS for redis", f: securityFlags{caFile: crt}, backend: "redis", wantErr: "not supported"},
		{name: "cert without key", f: securityFlags{caFile: crt, certFile: crt}, backend: "etcd", wantErr: "go together"},
		{name: "CA not PEM", f: securityFlags{caFile: token}, backend: "etcd", wantErr: "no PEM certificate"},
		{name: "CA missing", f: securityFlags{caFile: filepath.Join(dir, "nope")}, backend: "etcd", wantErr: "-tls-ca"},
		{name: "empty token", f: securityFlags{caFile: crt, tokenFile: empty}, backend: "keystore", wantErr: "first line is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sec, err := tt.f.load(tt.backend)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("load: got error %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if got := sec.tlsMode(); got != tt.wantTLS {
				t.Errorf("tlsMode: got %q; want %q", got, tt.wantTLS)
			}
			if got := sec.authMode(); got != tt.wantAuth {
				t.Errorf("authMode: got %q; want %q", got, tt.wantAuth)
			}
			if sec.token != tt.wantToken {
				t.Errorf("token: got %q; want %q", sec.token, tt.wantToken)
			}
		})
	}
}

// TestReportTLS checks that keystore over TLS is compared with its peers
// over TLS, and plaintext with plaintext, and that the cost of TLS is given
// per backend.
func TestReportTLS(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw.jsonl")
	runs := []result{
		{Backend: "keystore", Label: "keystore-3", Concurrency: 64, LifecyclesPerS: 4000, ClaimP50Ms: 6, ClaimP99Ms: 24},
		{Backend: "keystore", Label: "keystore-3-mtls", TLS: "mutual", Auth: "token", Concurrency: 64, LifecyclesPerS: 3000, ClaimP50Ms: 8, ClaimP99Ms: 30},
		{Backend: "etcd", Label: "etcd-3", Concurrency: 64, LifecyclesPerS: 1000, ClaimP50Ms: 24, ClaimP99Ms: 96},
		{Backend: "etcd", Label: "etcd-3-mtls", TLS: "mutual", Concurrency: 64, LifecyclesPerS: 600, ClaimP50Ms: 40, ClaimP99Ms: 150},
	}
	for i, r := range runs {
		r.Time = time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC).Format(time.RFC3339)
		if err := r.appendJSON(raw); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "out")
	if err := reportCmd([]string{"-in", raw, "-out", out, "-command", "MTLS=1 ./bench/run.sh"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{
		"# keystore against etcd, with and without TLS",
		"Command: `MTLS=1 ./bench/run.sh`",
		"- keystore-3-mtls: mutual TLS (the client presents a certificate of the servers' CA), and a bearer token with every call",
		"- etcd-3-mtls: mutual TLS (the client presents a certificate of the servers' CA)\n",
		"| keystore-3 / etcd-3 | 4.00× | 0.25× | 0.25× |",
		"| keystore-3-mtls / etcd-3-mtls | 5.00× | 0.20× | 0.20× |",
		"| keystore-3-mtls / keystore-3 | 0.75× | 1.25× | 1.33× |",
		"| etcd-3-mtls / etcd-3 | 0.60× | 1.56× | 1.67× |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("results.md lacks %q:\n%s", want, md)
		}
	}
	for _, unwanted := range []string{"| keystore-3 / etcd-3-mtls", "| keystore-3-mtls / etcd-3 |"} {
		if strings.Contains(md, unwanted) {
			t.Errorf("results.md compares across TLS modes (%q):\n%s", unwanted, md)
		}
	}
	// Display order: per backend, plaintext first.
	order := []string{"| keystore-3 | 1 |", "| keystore-3-mtls | 1 |", "| etcd-3 | 1 |", "| etcd-3-mtls | 1 |"}
	last := -1
	for _, row := range order {
		i := strings.Index(md, row)
		if i < last {
			t.Errorf("row %q out of order:\n%s", row, md)
		}
		last = i
	}
}

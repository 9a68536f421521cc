package certgen

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"slices"
	"testing"
	"time"
)

// mustNewCA makes a CA or fails the test.
func mustNewCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := NewCA(name)
	if err != nil {
		t.Fatalf("NewCA(%q): %v", name, err)
	}
	return ca
}

// parseLeaf checks that leaf is a usable key pair and returns its certificate.
func parseLeaf(t *testing.T, leaf *Leaf) *x509.Certificate {
	t.Helper()
	pair, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatalf("tls.X509KeyPair: %v", err)
	}
	if pair.Leaf == nil {
		t.Fatal("tls.X509KeyPair: no parsed leaf")
	}
	return pair.Leaf
}

func TestNewCA(t *testing.T) {
	ca := mustNewCA(t, "test CA")
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid {
		t.Errorf("IsCA = %v, BasicConstraintsValid = %v; want both true", c.IsCA, c.BasicConstraintsValid)
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("KeyUsage = %v; want KeyUsageCertSign", c.KeyUsage)
	}
	if c.Subject.CommonName != "test CA" {
		t.Errorf("CommonName = %q; want %q", c.Subject.CommonName, "test CA")
	}
	now := time.Now()
	if !c.NotBefore.Before(now.Add(-50*time.Minute)) || c.NotAfter.Before(now.AddDate(9, 11, 0)) {
		t.Errorf("validity %s .. %s; want from an hour ago for ten years", c.NotBefore, c.NotAfter)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	block, _ := pem.Decode(ca.CertPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("CertPEM is not a CERTIFICATE block")
	}
	if !slices.Equal(block.Bytes, c.Raw) {
		t.Error("CertPEM does not hold Cert")
	}
}

func TestIssue(t *testing.T) {
	ca := mustNewCA(t, "test CA")
	other := mustNewCA(t, "other CA")
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(other.Cert)

	server := x509.ExtKeyUsageServerAuth
	client := x509.ExtKeyUsageClientAuth
	tests := []struct {
		name      string
		opts      IssueOptions
		wantUsage []x509.ExtKeyUsage
		notUsage  []x509.ExtKeyUsage
		verifyAs  string // a name the certificate must be valid for
	}{
		{
			name:      "node",
			opts:      IssueOptions{CommonName: "n1", DNSNames: []string{"n1", "localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, Server: true, Client: true},
			wantUsage: []x509.ExtKeyUsage{server, client},
			verifyAs:  "127.0.0.1",
		},
		{
			name:      "server only",
			opts:      IssueOptions{CommonName: "web", DNSNames: []string{"web.example"}, Server: true},
			wantUsage: []x509.ExtKeyUsage{server},
			notUsage:  []x509.ExtKeyUsage{client},
			verifyAs:  "web.example",
		},
		{
			name:      "client only",
			opts:      IssueOptions{CommonName: "admin", Client: true},
			wantUsage: []x509.ExtKeyUsage{client},
			notUsage:  []x509.ExtKeyUsage{server},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf, err := ca.Issue(tt.opts)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			c := parseLeaf(t, leaf)
			if c.Subject.CommonName != tt.opts.CommonName {
				t.Errorf("CommonName = %q; want %q", c.Subject.CommonName, tt.opts.CommonName)
			}
			if !slices.Equal(c.DNSNames, tt.opts.DNSNames) {
				t.Errorf("DNSNames = %q; want %q", c.DNSNames, tt.opts.DNSNames)
			}
			if !slices.EqualFunc(c.IPAddresses, tt.opts.IPs, net.IP.Equal) {
				t.Errorf("IPAddresses = %v; want %v", c.IPAddresses, tt.opts.IPs)
			}
			if c.IsCA {
				t.Error("leaf is a CA")
			}
			if !slices.Equal(c.ExtKeyUsage, tt.wantUsage) {
				t.Errorf("ExtKeyUsage = %v; want %v", c.ExtKeyUsage, tt.wantUsage)
			}
			for _, u := range tt.wantUsage {
				opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}, DNSName: tt.verifyAs}
				if _, err := c.Verify(opts); err != nil {
					t.Errorf("Verify for usage %v: %v", u, err)
				}
				opts.Roots = otherRoots
				if _, err := c.Verify(opts); err == nil {
					t.Errorf("Verify against another CA for usage %v: got nil error", u)
				}
			}
			for _, u := range tt.notUsage {
				opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}}
				if _, err := c.Verify(opts); err == nil {
					t.Errorf("Verify for usage %v not asked for: got nil error", u)
				}
			}
			if tt.verifyAs != "" {
				opts := x509.VerifyOptions{Roots: roots, KeyUsages: tt.wantUsage, DNSName: "wrong.example"}
				if _, err := c.Verify(opts); err == nil {
					t.Error("Verify for a name not in the SANs: got nil error")
				}
			}
		})
	}
}

func TestIssueValidity(t *testing.T) {
	ca := mustNewCA(t, "test CA")
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	now := time.Now()

	t.Run("defaults", func(t *testing.T) {
		leaf, err := ca.Issue(IssueOptions{CommonName: "n1", Server: true})
		if err != nil {
			t.Fatalf("Issue: %v", err)
		}
		c := parseLeaf(t, leaf)
		if !c.NotBefore.Before(now.Add(-50*time.Minute)) || c.NotAfter.Before(now.AddDate(0, 11, 0)) || c.NotAfter.After(now.AddDate(1, 0, 1)) {
			t.Errorf("validity %s .. %s; want from an hour ago for a year", c.NotBefore, c.NotAfter)
		}
	})
	t.Run("expired", func(t *testing.T) {
		leaf, err := ca.Issue(IssueOptions{CommonName: "n1", Server: true, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
		if err != nil {
			t.Fatalf("Issue: %v", err)
		}
		c := parseLeaf(t, leaf)
		_, err = c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		var invalid x509.CertificateInvalidError
		if !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
			t.Errorf("Verify of an expired certificate: got %v; want an Expired error", err)
		}
	})
}

func TestIssueErrors(t *testing.T) {
	ca := mustNewCA(t, "test CA")
	now := time.Now()
	tests := []struct {
		name string
		ca   *CA
		opts IssueOptions
		want error // nil: any error
	}{
		{name: "no usage", ca: ca, opts: IssueOptions{CommonName: "n1"}, want: ErrNoUsage},
		{name: "inverted validity", ca: ca, opts: IssueOptions{CommonName: "n1", Server: true, NotBefore: now, NotAfter: now.Add(-time.Minute)}, want: ErrValidity},
		{name: "empty validity", ca: ca, opts: IssueOptions{CommonName: "n1", Server: true, NotBefore: now, NotAfter: now}, want: ErrValidity},
		{name: "nil CA", ca: nil, opts: IssueOptions{CommonName: "n1", Server: true}},
		{name: "CA without key", ca: &CA{Cert: ca.Cert}, opts: IssueOptions{CommonName: "n1", Server: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf, err := tt.ca.Issue(tt.opts)
			if err == nil {
				t.Fatalf("Issue: got %v, nil error; want an error", leaf)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Issue: got %v; want %v", err, tt.want)
			}
		})
	}
}

package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// readPool reads a CA file into a pool.
func readPool(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatalf("%s holds no certificate", path)
	}
	return pool
}

// readLeaf reads dir/name.crt and .key and returns the certificate.
func readLeaf(t *testing.T, dir, name string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return pair.Leaf
}

func TestRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	var stdout bytes.Buffer
	args := []string{"-out", dir, "-nodes", "n1,n2,n3", "-clients", "admin,payments", "-hosts", "localhost,127.0.0.1,::1"}
	if err := run(args, &stdout, io.Discard); err != nil {
		t.Fatalf("run: %v", err)
	}

	wantModes := map[string]os.FileMode{"ca.crt": 0o644, "stranger-ca.crt": 0o644}
	for _, n := range []string{"n1", "n2", "n3", "client-admin", "client-payments", "stranger"} {
		wantModes[n+".crt"] = 0o600
		wantModes[n+".key"] = 0o600
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(wantModes) {
		t.Errorf("%s holds %d files; want %d", dir, len(entries), len(wantModes))
	}
	for name, want := range wantModes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("stat %s: %v", name, err)
			continue
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %v; want %v", name, got, want)
		}
		if !strings.Contains(stdout.String(), filepath.Join(dir, name)) {
			t.Errorf("output does not mention %s:\n%s", name, stdout.String())
		}
	}

	roots := readPool(t, filepath.Join(dir, "ca.crt"))
	strangerRoots := readPool(t, filepath.Join(dir, "stranger-ca.crt"))
	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	tests := []struct {
		file     string
		roots    *x509.CertPool
		cn       string
		dns      []string
		verifyAs []string // names and IPs the certificate must be valid for
		usage    [][]x509.ExtKeyUsage
		notUsage [][]x509.ExtKeyUsage
	}{
		{file: "n1", roots: roots, cn: "n1", dns: []string{"n1", "localhost"}, verifyAs: []string{"n1", "localhost", "127.0.0.1", "::1"}, usage: [][]x509.ExtKeyUsage{server, client}},
		{file: "n3", roots: roots, cn: "n3", dns: []string{"n3", "localhost"}, verifyAs: []string{"n3"}, usage: [][]x509.ExtKeyUsage{server, client}},
		{file: "client-admin", roots: roots, cn: "admin", usage: [][]x509.ExtKeyUsage{client}, notUsage: [][]x509.ExtKeyUsage{server}},
		{file: "stranger", roots: strangerRoots, cn: "n1", dns: []string{"n1", "localhost"}, verifyAs: []string{"n1"}, usage: [][]x509.ExtKeyUsage{server, client}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c := readLeaf(t, dir, tt.file)
			if c.Subject.CommonName != tt.cn {
				t.Errorf("CommonName = %q; want %q", c.Subject.CommonName, tt.cn)
			}
			if !slices.Equal(c.DNSNames, tt.dns) {
				t.Errorf("DNSNames = %q; want %q", c.DNSNames, tt.dns)
			}
			for _, u := range tt.usage {
				for _, name := range append([]string{""}, tt.verifyAs...) {
					if _, err := c.Verify(x509.VerifyOptions{Roots: tt.roots, KeyUsages: u, DNSName: name}); err != nil {
						t.Errorf("Verify(%v, %q): %v", u, name, err)
					}
				}
			}
			for _, u := range tt.notUsage {
				if _, err := c.Verify(x509.VerifyOptions{Roots: tt.roots, KeyUsages: u}); err == nil {
					t.Errorf("Verify(%v): got nil error for a usage not asked for", u)
				}
			}
			// The stranger must not verify against the cluster CA, nor
			// the cluster's certificates against the stranger CA.
			wrong := strangerRoots
			if tt.roots == strangerRoots {
				wrong = roots
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: wrong, KeyUsages: tt.usage[0]}); err == nil {
				t.Error("Verify against the other CA: got nil error")
			}
		})
	}

	n1 := readLeaf(t, dir, "n1")
	wantIPs := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	if !slices.EqualFunc(n1.IPAddresses, wantIPs, net.IP.Equal) {
		t.Errorf("n1 IPAddresses = %v; want %v", n1.IPAddresses, wantIPs)
	}
}

func TestRunRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	args := []string{"-out", dir, "-nodes", "n1"}
	if err := run(args, io.Discard, io.Discard); err != nil {
		t.Fatalf("first run: %v", err)
	}
	before, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := run(args, io.Discard, io.Discard); err == nil {
		t.Fatal("second run without -force: got nil error")
	}
	after, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("second run without -force changed ca.crt")
	}
	if err := run(append(args, "-force"), io.Discard, io.Discard); err != nil {
		t.Fatalf("run with -force: %v", err)
	}
	after, err = os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before, after) {
		t.Error("run with -force kept the old ca.crt")
	}
}

func TestRunBadArgs(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"no out", []string{"-nodes", "n1"}},
		{"no nodes", []string{"-out", "DIR"}},
		{"empty nodes", []string{"-out", "DIR", "-nodes", " , "}},
		{"duplicate node", []string{"-out", "DIR", "-nodes", "n1,n1"}},
		{"node named ca", []string{"-out", "DIR", "-nodes", "ca"}},
		{"node named stranger", []string{"-out", "DIR", "-nodes", "n1,stranger"}},
		{"node clashing with client", []string{"-out", "DIR", "-nodes", "client-admin", "-clients", "admin"}},
		{"path in name", []string{"-out", "DIR", "-nodes", "../n1"}},
		{"hidden name", []string{"-out", "DIR", "-nodes", ".n1"}},
		{"IP as name", []string{"-out", "DIR", "-nodes", "10.0.0.1"}},
		{"bad client", []string{"-out", "DIR", "-nodes", "n1", "-clients", "a/b"}},
		{"stray argument", []string{"-out", "DIR", "-nodes", "n1", "extra"}},
		{"unknown flag", []string{"-out", "DIR", "-nodes", "n1", "-bogus"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			args := slices.Clone(tt.args)
			for i, a := range args {
				if a == "DIR" {
					args[i] = dir
				}
			}
			if err := run(args, io.Discard, io.Discard); err == nil {
				t.Fatalf("run(%q): got nil error", tt.args)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 0 {
				t.Errorf("run(%q) wrote %d files; want none", tt.args, len(entries))
			}
		})
	}
}

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

// securityFlags say how the benchmark's clients reach servers that want TLS
// and credentials: keystore with client TLS, client certificates and an
// authorization policy, etcd with client TLS and --client-cert-auth.
type securityFlags struct {
	caFile, certFile, keyFile, tokenFile string
}

func (f *securityFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.caFile, "tls-ca", "", "keystore and etcd: connect over TLS, verifying the servers against this CA (PEM)")
	fs.StringVar(&f.certFile, "tls-cert", "", "keystore and etcd: present this client certificate (PEM; with -tls-key)")
	fs.StringVar(&f.keyFile, "tls-key", "", "the key of -tls-cert (PEM)")
	fs.StringVar(&f.tokenFile, "token-file", "", "keystore only: send the bearer token on this file's first line with every call (needs -tls-ca)")
}

// security is what the clients of one run use to reach the servers. The
// zero value is plaintext without credentials, the default benchmark.
type security struct {
	tls   *tls.Config // nil: plaintext
	token string      // keystore's bearer token; empty: none
	// quiet silences the clients' own logs (etcd's warns of every failed
	// attempt): checkRefusals expects failures.
	quiet bool
}

// tlsMode names the transport for the results: "" (plaintext), "server"
// (the servers' certificates verified) or "mutual" (a client certificate
// presented too).
func (s security) tlsMode() string {
	switch {
	case s.tls == nil:
		return ""
	case len(s.tls.Certificates) > 0:
		return "mutual"
	}
	return "server"
}

// authMode names the per-call credential for the results: "" or "token".
func (s security) authMode() string {
	if s.token != "" {
		return "token"
	}
	return ""
}

// load reads the files the flags name and checks that backend can use
// them: only the keystore and etcd clients are given TLS here, and only
// keystore a token. Without any of the flags it returns the zero security.
func (f securityFlags) load(backend string) (security, error) {
	if f == (securityFlags{}) {
		return security{}, nil
	}
	switch {
	case backend != "keystore" && backend != "etcd":
		return security{}, fmt.Errorf("-tls-ca, -tls-cert, -tls-key and -token-file: not supported for -backend %s", backend)
	case f.tokenFile != "" && backend != "keystore":
		return security{}, fmt.Errorf("-token-file: keystore only, not -backend %s", backend)
	case f.caFile == "":
		return security{}, errors.New("-tls-cert, -tls-key and -token-file need -tls-ca")
	case (f.certFile == "") != (f.keyFile == ""):
		return security{}, errors.New("-tls-cert and -tls-key go together")
	}
	pem, err := os.ReadFile(f.caFile)
	if err != nil {
		return security{}, fmt.Errorf("-tls-ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return security{}, fmt.Errorf("-tls-ca %s: no PEM certificate in it", f.caFile)
	}
	// NB: ServerName stays empty: each client verifies the endpoint's
	// host, 127.0.0.1 here, against the certificates' IP SANs.
	sec := security{tls: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	if f.certFile != "" {
		pair, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
		if err != nil {
			return security{}, fmt.Errorf("-tls-cert, -tls-key: %w", err)
		}
		sec.tls.Certificates = []tls.Certificate{pair}
	}
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return security{}, fmt.Errorf("-token-file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		if sec.token = strings.TrimSpace(line); sec.token == "" {
			return security{}, fmt.Errorf("-token-file %s: the first line is empty", f.tokenFile)
		}
	}
	return sec, nil
}

// refusalTimeout bounds one probe of checkRefusals: the keystore client
// retries a refused connection on every node until its deadline.
const refusalTimeout = 3 * time.Second

// checkRefusals makes sure that the servers bf names refuse a client that
// lacks what sec adds: the plaintext one, one over TLS without the client
// certificate, and (keystore) one with the certificate but no token. A
// secure setup that let them through would not be the one measured. It
// returns what was refused, for the log.
func checkRefusals(ctx context.Context, bf backendFlags, sec security) (string, error) {
	if sec.tls == nil {
		return "", nil
	}
	type probe struct {
		what string
		sec  security
	}
	probes := []probe{{what: "plaintext", sec: security{quiet: true}}}
	if len(sec.tls.Certificates) > 0 {
		noCert := sec.tls.Clone()
		noCert.Certificates = nil
		what := "TLS without a client certificate"
		if sec.token != "" {
			what += " (with the token)"
		}
		probes = append(probes, probe{what: what, sec: security{tls: noCert, token: sec.token, quiet: true}})
	}
	if sec.token != "" {
		probes = append(probes, probe{what: "a client certificate without the token", sec: security{tls: sec.tls, quiet: true}})
	}
	var refused []string
	for _, p := range probes {
		pctx, cancel := context.WithTimeout(ctx, refusalTimeout)
		err := pingOnce(pctx, bf, p.sec)
		cancel()
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if err == nil {
			return "", fmt.Errorf("%s at %s completed a lifecycle over %s; want it refused", bf.backend, bf.endpoints, p.what)
		}
		refused = append(refused, p.what)
	}
	return strings.Join(refused, "; "), nil
}

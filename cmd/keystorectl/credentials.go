package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// How keystorectl connects and who it says it is: TLS (--tls, --cacert,
// --cert/--cert-key, --server-name) and a bearer token (--token-file or
// $KEYSTORECTL_TOKEN). The client package's connections and the membership
// calls' (cluster.go) use the same.
//
// NB: the files are read once, with plain crypto/tls rather than
// internal/tlsconf: keystorectl lives for one call, so nothing needs
// reloading; and with ServerName empty crypto/tls verifies each endpoint's
// host, which gRPC sets per connection, while tlsconf's ClientConfig("")
// would verify no name at all. --tls without --cacert verifies against the
// system's roots, which tlsconf does not offer.

// tokenEnv names the environment variable of the bearer token.
const tokenEnv = "KEYSTORECTL_TOKEN"

// credentialHint says how to give a credential, for the message of an
// UNAUTHENTICATED answer to a call made without one.
const credentialHint = "--token-file, " + tokenEnv + ", or --cert with --cert-key"

// securityUsage follows the global flags in the usage.
const securityUsage = "Credentials: a bearer token, from the first line of --token-file or else from $" + tokenEnv + ",\n" +
	"is sent with every call; it needs TLS (--tls, --cacert or --cert) unless --insecure-token.\n" +
	"A server that identifies callers by certificate takes --cert and --cert-key instead.\n"

// securityFlags are the global flags of TLS and the token.
type securityFlags struct {
	tls           bool
	cacert        string
	cert, certKey string
	serverName    string
	tokenFile     string
	insecureToken bool
}

// register adds the flags to fs, defaulting to their current values (see
// globals.register).
func (s *securityFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&s.tls, "tls", s.tls, "connect with TLS, verifying the servers against the system's roots (or --cacert)")
	fs.StringVar(&s.cacert, "cacert", s.cacert, "verify the servers against the CA certificates in `FILE` (PEM); implies --tls")
	fs.StringVar(&s.cert, "cert", s.cert, "present the client certificate in `FILE` (PEM; with --cert-key); implies --tls")
	fs.StringVar(&s.certKey, "cert-key", s.certKey, "the private key of --cert, in `FILE` (PEM)")
	fs.StringVar(&s.serverName, "server-name", s.serverName, "the `NAME` to verify in the servers' certificates (default: each endpoint's host)")
	fs.StringVar(&s.tokenFile, "token-file", s.tokenFile,
		"send the bearer token on the first line of `FILE` (default: $"+tokenEnv+"); not a claim's --token")
	fs.BoolVar(&s.insecureToken, "insecure-token", s.insecureToken,
		"send the bearer token without TLS (local testing only: anyone on the path can read it)")
}

// useTLS reports whether the flags ask for TLS.
func (s *securityFlags) useTLS() bool { return s.tls || s.cacert != "" || s.cert != "" }

// hasToken reports whether a token is given, by flag or environment.
func (s *securityFlags) hasToken() bool {
	return s.tokenFile != "" || strings.TrimSpace(os.Getenv(tokenEnv)) != ""
}

// hasCredential reports whether a token or a client certificate is given.
func (s *securityFlags) hasCredential() bool { return s.hasToken() || s.cert != "" }

// validate refuses combinations that cannot work, or would send a token
// in the clear unasked.
func (s *securityFlags) validate() error {
	switch {
	case s.cert != "" && s.certKey == "":
		return usageErrorf("--cert needs --cert-key, the certificate's private key")
	case s.certKey != "" && s.cert == "":
		return usageErrorf("--cert-key needs --cert, the certificate")
	case s.serverName != "" && !s.useTLS():
		return usageErrorf("--server-name needs TLS (--tls, --cacert or --cert)")
	case s.hasToken() && !s.useTLS() && !s.insecureToken:
		what := "--token-file"
		if s.tokenFile == "" {
			what = "$" + tokenEnv
		}
		return usageErrorf("%s: a token needs TLS (--tls, --cacert or --cert); --insecure-token sends it in the clear, "+
			"for local testing only", what)
	}
	return nil
}

// credential is what the flags load: the TLS configuration (nil:
// plaintext) and the bearer token ("": none).
type credential struct {
	tls   *tls.Config
	token string
}

// load reads the files the flags name, and the token.
func (s *securityFlags) load() (credential, error) {
	var c credential
	if s.useTLS() {
		// With ServerName empty, gRPC sets it per connection to the
		// endpoint's host, which crypto/tls verifies.
		c.tls = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: s.serverName}
		if s.cacert != "" {
			pem, err := os.ReadFile(s.cacert)
			if err != nil {
				return c, fmt.Errorf("--cacert: %w", err)
			}
			c.tls.RootCAs = x509.NewCertPool()
			if !c.tls.RootCAs.AppendCertsFromPEM(pem) {
				return c, fmt.Errorf("--cacert: %s holds no PEM certificate", s.cacert)
			}
		}
		if s.cert != "" {
			cert, err := tls.LoadX509KeyPair(s.cert, s.certKey)
			if err != nil {
				return c, fmt.Errorf("--cert and --cert-key: %w", err)
			}
			c.tls.Certificates = []tls.Certificate{cert}
		}
	}
	switch {
	case s.tokenFile != "":
		data, err := os.ReadFile(s.tokenFile)
		if err != nil {
			return c, fmt.Errorf("--token-file: %w", err)
		}
		line, _, _ := bytes.Cut(data, []byte("\n"))
		if c.token = string(bytes.TrimSpace(line)); c.token == "" {
			return c, fmt.Errorf("--token-file: the first line of %s is empty", s.tokenFile)
		}
		if err := checkToken(c.token); err != nil {
			return c, fmt.Errorf("--token-file: %s: %w", s.tokenFile, err)
		}
	default:
		c.token = strings.TrimSpace(os.Getenv(tokenEnv))
		if err := checkToken(c.token); err != nil {
			return c, fmt.Errorf("$%s: %w", tokenEnv, err)
		}
	}
	return c, nil
}

// checkToken refuses a token that cannot travel in a header as it is: only
// visible ASCII, no spaces ("" is no token, and passes).
func checkToken(tok string) error {
	if strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return fmt.Errorf("the token has a space or a character outside visible ASCII")
	}
	return nil
}

// dialOptions are the options of a connection of the membership calls,
// which keystorectl makes itself; the client package builds the same from
// client.Config.
func (c credential) dialOptions(insecureToken bool) []grpc.DialOption {
	transport := insecure.NewCredentials()
	if c.tls != nil {
		transport = credentials.NewTLS(c.tls)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(transport)}
	if c.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerToken{token: c.token, insecure: insecureToken}))
	}
	return opts
}

// bearerToken sends "authorization: Bearer <token>" with every call.
type bearerToken struct {
	token    string
	insecure bool // allow plaintext (--insecure-token)
}

// GetRequestMetadata returns the authorization header of one call.
func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity makes gRPC refuse to send the token without
// TLS, unless --insecure-token.
func (b bearerToken) RequireTransportSecurity() bool { return !b.insecure }

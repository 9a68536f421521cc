package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// nextProtos are the ALPN protocols a server offers: gRPC requires h2;
// http/1.1 lets an HTTPS endpoint serve plain HTTP/1 clients too.
var nextProtos = []string{"h2", "http/1.1"}

// ServerConfig returns a configuration for a listener. Every handshake gets
// a fresh configuration (through GetConfigForClient) holding the
// certificate and the client-CA pool in effect at its start, so reloads
// apply to the next handshake. With tls.VerifyClientCertIfGiven or
// tls.RequireAndVerifyClientCert, client certificates are verified against
// the current CA pool, for client-auth usage; without a CA such handshakes
// fail with ErrNoCA (there is no fallback to the system's roots).
//
// The minimum version is TLS 1.2; TLS 1.3 is negotiated when the client
// offers it. ALPN offers h2 (for gRPC) and http/1.1. Session tickets are
// off, so every connection is verified in full against the current pool.
//
// Only GetConfigForClient of the returned configuration is used for
// handshakes: changing its other fields has no effect.
func (s *Source) ServerConfig(clientAuth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS12,
		NextProtos:             slices.Clone(nextProtos),
		SessionTicketsDisabled: true,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.handshakeConfig(clientAuth)
		},
	}
}

// handshakeConfig is the server configuration of one handshake.
func (s *Source) handshakeConfig(clientAuth tls.ClientAuthType) (*tls.Config, error) {
	m := s.cur.Load()
	if m.cert == nil {
		return nil, ErrNoCertificate
	}
	verify := clientAuth == tls.VerifyClientCertIfGiven || clientAuth == tls.RequireAndVerifyClientCert
	if verify && m.pool == nil {
		// NB: crypto/tls would verify against the system's roots.
		return nil, fmt.Errorf("%w to verify client certificates", ErrNoCA)
	}
	return &tls.Config{
		MinVersion:             tls.VersionTLS12,
		NextProtos:             slices.Clone(nextProtos),
		SessionTicketsDisabled: true,
		Certificates:           []tls.Certificate{*m.cert},
		ClientAuth:             clientAuth,
		ClientCAs:              m.pool,
	}, nil
}

// ClientConfig returns a configuration for dialing a server named
// serverName (a DNS name or an IP address). It presents the current client
// certificate, if the Source has one, when the server asks for one, and
// verifies the server's chain against the CA pool in effect at the
// handshake, for server-auth usage, and its name against serverName. A
// Source without a CA refuses every server (ErrNoCA).
//
// serverName "" verifies the chain but not the name: any certificate of
// the CA passes. It is for callers that check the identity themselves, for
// example by wrapping VerifyConnection: once this VerifyConnection returned
// nil, PeerCertificates[0] is a verified leaf.
//
// Because crypto/tls cannot swap the RootCAs of a configuration in use, the
// returned configuration sets InsecureSkipVerify and does the full
// verification in VerifyConnection, which crypto/tls runs on every
// handshake, resumed ones included. Consequently ConnectionState's
// VerifiedChains is empty on the dialing side, and PeerIdentity reports
// false there: the server's identity is the serverName checked here.
// Callers must keep VerifyConnection, and must not rely on ServerName for
// verification (gRPC may set it from the target's authority for SNI).
func (s *Source) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		// NB: this turns off only crypto/tls's own verification, against
		// a fixed RootCAs; VerifyConnection below replaces it.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verifyServer(cs, serverName)
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if m := s.cur.Load(); m.cert != nil {
				return m.cert, nil
			}
			return &tls.Certificate{}, nil // no certificate to send
		},
	}
}

// verifyServer verifies the server's certificate chain in cs against the
// current CA pool, for server-auth usage and for serverName unless empty.
func (s *Source) verifyServer(cs tls.ConnectionState, serverName string) error {
	m := s.cur.Load()
	if m.pool == nil {
		return fmt.Errorf("%w to verify the server", ErrNoCA)
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tlsconf: server sent no certificate")
	}
	opts := x509.VerifyOptions{
		Roots:         m.pool,
		Intermediates: x509.NewCertPool(),
		DNSName:       serverName,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("tlsconf: verify server certificate: %w", err)
	}
	return nil
}

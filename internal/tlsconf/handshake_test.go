package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/certgen"
)

// Checks of a handshake error.
var (
	noErr            = func(err error) bool { return err == nil }
	someErr          = func(err error) bool { return err != nil }
	unknownAuthority = func(err error) bool { return errors.As(err, new(x509.UnknownAuthorityError)) }
	wrongName        = func(err error) bool { return errors.As(err, new(x509.HostnameError)) }
	noCA             = func(err error) bool { return errors.Is(err, ErrNoCA) }
)

// invalid checks for an x509.CertificateInvalidError with reason r.
func invalid(r x509.InvalidReason) func(error) bool {
	return func(err error) bool {
		var e x509.CertificateInvalidError
		return errors.As(err, &e) && e.Reason == r
	}
}

func TestHandshake(t *testing.T) {
	f := newFixture(t)
	ca, otherCA := f.path("ca.crt"), f.path("other-ca.crt")
	n1 := f.node(t, f.ca, "n1", "n1")
	n2 := f.node(t, f.ca, "n2", "n2")
	stranger := f.node(t, f.other, "stranger", "n1")
	admin := f.issue(t, f.ca, "admin", certgen.IssueOptions{CommonName: "admin", Client: true})
	serverOnly := f.issue(t, f.ca, "server-only", certgen.IssueOptions{CommonName: "n3", DNSNames: []string{"n3"}, Server: true})
	now := time.Now()
	expired := f.issue(t, f.ca, "expired", certgen.IssueOptions{CommonName: "n1", DNSNames: []string{"n1"},
		Server: true, Client: true, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
	with := func(files Files, caPath string) Files { files.CA = caPath; return files }

	tests := []struct {
		name       string
		server     Files
		clientAuth tls.ClientAuthType
		client     Files
		serverName string
		serverErr  func(error) bool
		clientErr  func(error) bool
		peerNames  []string // from PeerIdentity on the server; nil: ok false
		clientID   string   // from ClientIdentity on the server
	}{
		{name: "mutual", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "n1", serverErr: noErr, clientErr: noErr, peerNames: []string{"n2", "localhost"}, clientID: "n2"},
		{name: "server by IP", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "127.0.0.1", serverErr: noErr, clientErr: noErr, peerNames: []string{"n2", "localhost"}, clientID: "n2"},
		{name: "server by other SAN", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "localhost", serverErr: noErr, clientErr: noErr, peerNames: []string{"n2", "localhost"}, clientID: "n2"},
		{name: "client cert", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(admin, ca),
			serverName: "n1", serverErr: noErr, clientErr: noErr, peerNames: []string{"admin"}, clientID: "admin"},
		{name: "no server name verifies the chain", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "", serverErr: noErr, clientErr: noErr, peerNames: []string{"n2", "localhost"}, clientID: "n2"},

		// The server refuses the client.
		{name: "client cert of another CA", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(stranger, ca),
			serverName: "n1", serverErr: unknownAuthority, clientErr: someErr},
		{name: "no client cert", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: Files{CA: ca},
			serverName: "n1", serverErr: someErr, clientErr: someErr},
		{name: "expired client cert", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(expired, ca),
			serverName: "n1", serverErr: invalid(x509.Expired), clientErr: someErr},
		{name: "client cert without client usage", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(serverOnly, ca),
			serverName: "n1", serverErr: invalid(x509.IncompatibleUsage), clientErr: someErr},
		{name: "optional client cert of another CA", server: with(n1, ca), clientAuth: tls.VerifyClientCertIfGiven, client: with(stranger, ca),
			serverName: "n1", serverErr: unknownAuthority, clientErr: someErr},
		{name: "server without CA cannot verify clients", server: n1, clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "n1", serverErr: noCA, clientErr: someErr},

		// The client refuses the server.
		{name: "wrong server name", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "n2", serverErr: someErr, clientErr: wrongName},
		{name: "wrong server IP", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "127.0.0.2", serverErr: someErr, clientErr: wrongName},
		{name: "server cert of another CA", server: with(stranger, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "n1", serverErr: someErr, clientErr: unknownAuthority},
		{name: "server cert of another CA, no server name", server: with(stranger, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "", serverErr: someErr, clientErr: unknownAuthority},
		{name: "client trusting only another CA", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, otherCA),
			serverName: "n1", serverErr: someErr, clientErr: unknownAuthority},
		{name: "expired server cert", server: with(expired, ca), clientAuth: tls.RequireAndVerifyClientCert, client: with(n2, ca),
			serverName: "n1", serverErr: someErr, clientErr: invalid(x509.Expired)},
		{name: "server cert without server usage", server: with(admin, ca), clientAuth: tls.NoClientCert, client: Files{CA: ca},
			serverName: "", serverErr: someErr, clientErr: invalid(x509.IncompatibleUsage)},
		{name: "client without CA", server: with(n1, ca), clientAuth: tls.RequireAndVerifyClientCert, client: n2,
			serverName: "n1", serverErr: someErr, clientErr: noCA},

		// Servers that do not require a verified client.
		{name: "optional client cert absent", server: with(n1, ca), clientAuth: tls.VerifyClientCertIfGiven, client: Files{CA: ca},
			serverName: "n1", serverErr: noErr, clientErr: noErr},
		{name: "optional client cert given", server: with(n1, ca), clientAuth: tls.VerifyClientCertIfGiven, client: with(admin, ca),
			serverName: "n1", serverErr: noErr, clientErr: noErr, peerNames: []string{"admin"}, clientID: "admin"},
		{name: "no client auth", server: n1, clientAuth: tls.NoClientCert, client: with(n2, ca),
			serverName: "n1", serverErr: noErr, clientErr: noErr},
		{name: "unverified client cert is no identity", server: n1, clientAuth: tls.RequireAnyClientCert, client: with(stranger, ca),
			serverName: "n1", serverErr: noErr, clientErr: noErr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server := mustLoad(t, tt.server, nil)
			client := mustLoad(t, tt.client, nil)
			srv, cli := handshake(t, server.ServerConfig(tt.clientAuth), client.ClientConfig(tt.serverName))
			if !tt.serverErr(srv.err) {
				t.Errorf("server error: got %v", srv.err)
			}
			if !tt.clientErr(cli.err) {
				t.Errorf("client error: got %v", cli.err)
			}
			if srv.err != nil || cli.err != nil {
				return
			}
			if srv.state.Version != tls.VersionTLS13 {
				t.Errorf("version %x; want TLS 1.3", srv.state.Version)
			}
			names, ok := PeerIdentity(srv.state)
			if ok != (tt.peerNames != nil) || !slices.Equal(names, tt.peerNames) {
				t.Errorf("PeerIdentity = %q, %v; want %q, %v", names, ok, tt.peerNames, tt.peerNames != nil)
			}
			id, ok := ClientIdentity(srv.state)
			if id != tt.clientID || ok != (tt.clientID != "") {
				t.Errorf("ClientIdentity = %q, %v; want %q, %v", id, ok, tt.clientID, tt.clientID != "")
			}
			// The dialing side verified in VerifyConnection: no
			// VerifiedChains there (see ClientConfig).
			if names, ok := PeerIdentity(cli.state); ok {
				t.Errorf("PeerIdentity on the dialing side = %q, true; want false", names)
			}
		})
	}
}

func TestServerConfigALPNAndVersions(t *testing.T) {
	f := newFixture(t)
	ca := f.path("ca.crt")
	n1 := f.node(t, f.ca, "n1", "n1")
	n1.CA = ca
	n2 := f.node(t, f.ca, "n2", "n2")
	n2.CA = ca
	server := mustLoad(t, n1, nil).ServerConfig(tls.RequireAndVerifyClientCert)
	client := mustLoad(t, n2, nil)

	tests := []struct {
		name        string
		protos      []string
		maxVersion  uint16
		wantProto   string
		wantVersion uint16
		wantErr     bool
	}{
		{name: "gRPC", protos: []string{"h2"}, wantProto: "h2", wantVersion: tls.VersionTLS13},
		{name: "HTTP/1.1", protos: []string{"http/1.1"}, wantProto: "http/1.1", wantVersion: tls.VersionTLS13},
		{name: "TLS 1.2", protos: []string{"h2"}, maxVersion: tls.VersionTLS12, wantProto: "h2", wantVersion: tls.VersionTLS12},
		{name: "TLS 1.1 refused", maxVersion: tls.VersionTLS11, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := client.ClientConfig("n1")
			cfg.NextProtos = tt.protos
			cfg.MaxVersion = tt.maxVersion
			if tt.maxVersion == tls.VersionTLS11 {
				cfg.MinVersion = tls.VersionTLS10
			}
			srv, cli := handshake(t, server, cfg)
			if tt.wantErr {
				if srv.err == nil || cli.err == nil {
					t.Fatalf("handshake: server error %v, client error %v; want both", srv.err, cli.err)
				}
				return
			}
			if srv.err != nil || cli.err != nil {
				t.Fatalf("handshake: server error %v, client error %v; want none", srv.err, cli.err)
			}
			if got := cli.state.NegotiatedProtocol; got != tt.wantProto {
				t.Errorf("NegotiatedProtocol = %q; want %q", got, tt.wantProto)
			}
			if got := cli.state.Version; got != tt.wantVersion {
				t.Errorf("Version = %x; want %x", got, tt.wantVersion)
			}
			if _, ok := PeerIdentity(srv.state); !ok {
				t.Error("PeerIdentity: no verified client")
			}
		})
	}
}

func TestServerConfigWithoutCertificate(t *testing.T) {
	f := newFixture(t)
	server := mustLoad(t, Files{CA: f.path("ca.crt")}, nil)
	client := mustLoad(t, Files{CA: f.path("ca.crt")}, nil)
	srv, cli := handshake(t, server.ServerConfig(tls.NoClientCert), client.ClientConfig(""))
	if !errors.Is(srv.err, ErrNoCertificate) || cli.err == nil {
		t.Errorf("handshake: server error %v, client error %v; want ErrNoCertificate and an error", srv.err, cli.err)
	}
}

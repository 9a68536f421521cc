package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/keystore-dev/keystore/auth"
	"github.com/keystore-dev/keystore/internal/tlsconf"
	"github.com/keystore-dev/keystore/raftnode"
	"github.com/keystore-dev/keystore/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// securityFlags are the flags of TLS, authorization and limits.
type securityFlags struct {
	certFile, keyFile, clientCAFile string
	clientCertRequired              bool
	peerCert, peerKey, peerCA       string
	policyFile, joinTokenFile       string
	reloadEvery                     time.Duration
	limits                          server.Limits
}

func (f *securityFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.certFile, "tls-cert-file", "", "serve the client port over TLS with this certificate (PEM; reloaded on change and on SIGHUP)")
	fs.StringVar(&f.keyFile, "tls-key-file", "", "the client port certificate's key (PEM)")
	fs.StringVar(&f.clientCAFile, "tls-client-ca-file", "", "verify client certificates against this CA (their CN is a credential of the --auth-policy-file); also the CA a joining node verifies other members' client ports with")
	fs.BoolVar(&f.clientCertRequired, "tls-client-cert-required", false, "refuse clients without a certificate of --tls-client-ca-file (default: optional, a bearer token may stand instead)")
	fs.StringVar(&f.peerCert, "peer-tls-cert-file", "", "mutual TLS on the peer port: this node's certificate (PEM), naming the member (its --name) among its DNS names or CN; reloaded on change")
	fs.StringVar(&f.peerKey, "peer-tls-key-file", "", "the peer certificate's key (PEM)")
	fs.StringVar(&f.peerCA, "peer-tls-ca-file", "", "the CA of the cluster's peer certificates (PEM); use a CA for this cluster alone")
	fs.StringVar(&f.policyFile, "auth-policy-file", "", "authorization policy (YAML: principals by bearer-token SHA-256 or client-certificate CN, their namespaces, admin); every call but health then needs a credential; reloaded on change and on SIGHUP")
	fs.StringVar(&f.joinTokenFile, "join-token-file", "", "a file holding an admin bearer token this node presents when it joins (with auth on; else its client certificate must be an admin's)")
	fs.DurationVar(&f.reloadEvery, "tls-reload-interval", 10*time.Second, "how often certificate, key, CA and policy files are checked for changes")
	fs.IntVar(&f.limits.MaxConnections, "max-connections", 4096, "client port connections at once (negative: no limit)")
	fs.IntVar(&f.limits.MaxStreamsPerConn, "max-streams-per-conn", 1024, "calls in flight on one client connection (negative: no limit)")
	fs.IntVar(&f.limits.MaxMetadataEntries, "max-metadata-entries", 64, "metadata entries of one call (negative: no limit)")
	fs.IntVar(&f.limits.MaxHeaderBytes, "max-header-bytes", 64<<10, "header bytes of one call (negative: no limit)")
}

// security is what the flags loaded: the sources to reload and what the
// server needs.
type security struct {
	client, peer *tlsconf.Source
	auth         *auth.Authorizer
	cfg          func(*server.Config)
}

// load reads the files the flags name.
func (f *securityFlags) load(logger *slog.Logger) (*security, error) {
	sec := &security{}
	var err error
	if (f.certFile == "") != (f.keyFile == "") {
		return nil, errors.New("--tls-cert-file and --tls-key-file go together")
	}
	if f.certFile == "" && (f.clientCAFile != "" || f.clientCertRequired) {
		return nil, errors.New("--tls-client-ca-file and --tls-client-cert-required need --tls-cert-file")
	}
	if f.certFile != "" {
		if sec.client, err = tlsconf.Load(tlsconf.Files{Cert: f.certFile, Key: f.keyFile, CA: f.clientCAFile}, logger.With("tls", "client")); err != nil {
			return nil, fmt.Errorf("client TLS: %w", err)
		}
	}
	switch n := countSet(f.peerCert, f.peerKey, f.peerCA); n {
	case 0:
	case 3:
		if sec.peer, err = tlsconf.Load(tlsconf.Files{Cert: f.peerCert, Key: f.peerKey, CA: f.peerCA}, logger.With("tls", "peer")); err != nil {
			return nil, fmt.Errorf("peer TLS: %w", err)
		}
	default:
		return nil, errors.New("--peer-tls-cert-file, --peer-tls-key-file and --peer-tls-ca-file go together")
	}
	if f.policyFile != "" {
		if sec.auth, err = auth.NewAuthorizer(f.policyFile, logger.With("component", "auth")); err != nil {
			return nil, err
		}
	}
	var joinDial []grpc.DialOption
	if sec.client != nil {
		joinDial = append(joinDial, grpc.WithTransportCredentials(credentials.NewTLS(sec.client.ClientConfig(""))))
	}
	if f.joinTokenFile != "" {
		b, err := os.ReadFile(f.joinTokenFile)
		if err != nil {
			return nil, fmt.Errorf("--join-token-file: %w", err)
		}
		token, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		if token == "" {
			return nil, errors.New("--join-token-file: empty")
		}
		if sec.client == nil {
			return nil, errors.New("--join-token-file needs TLS (--tls-cert-file): a token must not cross the network in clear")
		}
		joinDial = append(joinDial, grpc.WithPerRPCCredentials(bearer(token)))
	}
	clientAuth := tls.VerifyClientCertIfGiven
	if f.clientCertRequired {
		clientAuth = tls.RequireAndVerifyClientCert
	} else if f.clientCAFile == "" {
		clientAuth = tls.NoClientCert
	}
	sec.cfg = func(c *server.Config) {
		if sec.client != nil {
			c.ClientTLS = sec.client.ServerConfig(clientAuth)
		}
		if sec.peer != nil {
			c.PeerTLS = &raftnode.PeerTLS{
				Server: sec.peer.ServerConfig(tls.RequireAndVerifyClientCert),
				Client: sec.peer.ClientConfig,
				Names: func(cs tls.ConnectionState) []string {
					names, _ := tlsconf.PeerIdentity(cs)
					return names
				},
			}
		}
		c.Auth = sec.auth
		c.Limits = f.limits
		c.JoinDialOptions = joinDial
	}
	return sec, nil
}

// watch polls the files for changes until ctx ends.
func (s *security) watch(ctx context.Context, every time.Duration) {
	var wg sync.WaitGroup
	for _, src := range []*tlsconf.Source{s.client, s.peer} {
		if src != nil {
			wg.Go(func() { src.Watch(ctx, every) })
		}
	}
	if s.auth != nil {
		wg.Go(func() { s.auth.Watch(ctx, every) })
	}
	wg.Wait()
}

// reload rereads every file now (SIGHUP); failures keep what was loaded.
func (s *security) reload(logger *slog.Logger) {
	for what, src := range map[string]*tlsconf.Source{"client TLS": s.client, "peer TLS": s.peer} {
		if src != nil {
			if err := src.Reload(); err != nil {
				logger.Error(what+" not reloaded", "err", err)
			}
		}
	}
	if s.auth != nil {
		if err := s.auth.Reload(); err != nil {
			logger.Error("authorization policy not reloaded", "err", err)
		}
	}
}

func countSet(v ...string) int {
	n := 0
	for _, s := range v {
		if s != "" {
			n++
		}
	}
	return n
}

// bearer sends a bearer token with every call; only over TLS.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

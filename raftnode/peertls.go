package raftnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"google.golang.org/grpc/credentials"
	grpcpeer "google.golang.org/grpc/peer"
)

// PeerTLS secures the peer port (raft, snapshot and gRPC connections
// alike) with mutual TLS. Every connection is TLS; the acceptor requires a
// certificate of the cluster's CA, and checks that it names the member the
// connection says it comes from (a raft or snapshot connection's preamble)
// or, for the peer gRPC service (Forward, membership changes), some
// member. The dialler checks that the certificate it is shown names the
// member it meant to reach. So a certificate proves a member's name, not
// just membership of the CA: one stolen node key cannot speak for the
// others.
type PeerTLS struct {
	// Server is the listener's configuration; it must require and verify
	// client certificates (tls.RequireAndVerifyClientCert).
	Server *tls.Config
	// Client returns the configuration to dial the member named
	// serverName with: it presents this node's certificate and verifies
	// the peer's against the CA and serverName ("" verifies the chain
	// alone, for a member whose name this node does not know yet).
	Client func(serverName string) *tls.Config
	// Names returns the member names a verified certificate proves (its
	// DNS names and common name); none for an unverified one.
	Names func(cs tls.ConnectionState) []string
}

// tlsHandshakeTimeout bounds a dialled connection's handshake.
const tlsHandshakeTimeout = 5 * time.Second

// connState is a connection that knows its TLS state (*tls.Conn, and
// prefixConn over one).
type connState interface {
	ConnectionState() tls.ConnectionState
}

// ConnectionState passes the TLS state of the connection under c through,
// for the peer gRPC server's credentials (PeerServerCredentials).
func (c *prefixConn) ConnectionState() tls.ConnectionState {
	if cs, ok := c.Conn.(connState); ok {
		return cs.ConnectionState()
	}
	return tls.ConnectionState{}
}

// memberName returns the name of member id: as the applied log has it,
// else as the bootstrap configuration gave it; "" if unknown.
func (n *Node) memberName(id uint64) string {
	if ml, ok := n.sm.(memberLister); ok {
		for _, m := range ml.Members() {
			if m.GetId() == id && m.GetName() != "" {
				return m.GetName()
			}
		}
	}
	return n.cfg.Names[id]
}

// provesMember reports whether the TLS state of c proves it comes from
// member id. Without PeerTLS every connection passes.
func (t *tcpTransport) provesMember(c net.Conn, id uint64) error {
	if t.tls == nil {
		return nil
	}
	cs, ok := c.(connState)
	if !ok {
		return errors.New("not a TLS connection")
	}
	want := t.nameOf(id)
	if want == "" {
		return fmt.Errorf("member %x has no known name to check its certificate against", id)
	}
	names := t.tls.Names(cs.ConnectionState())
	if !slices.Contains(names, want) {
		return fmt.Errorf("certificate names %q, not member %q", names, want)
	}
	return nil
}

// callerIsMember reports whether the peer gRPC call in ctx came over a
// connection whose certificate names a current member (this node
// included). Without PeerTLS every call passes.
func (t *tcpTransport) callerIsMember(ctx context.Context) error {
	if t.tls == nil {
		return nil
	}
	p, ok := grpcpeer.FromContext(ctx)
	if !ok {
		return errors.New("no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return errors.New("not a TLS connection")
	}
	names := t.tls.Names(info.State)
	if slices.Contains(names, t.nameOf(t.self)) {
		return nil
	}
	t.pmu.RLock()
	ids := make([]uint64, 0, len(t.peers))
	for id := range t.peers {
		ids = append(ids, id)
	}
	t.pmu.RUnlock()
	for _, id := range ids {
		if n := t.nameOf(id); n != "" && slices.Contains(names, n) {
			return nil
		}
	}
	return fmt.Errorf("certificate names %q, no member", names)
}

// dialTLS wraps a dialled peer connection in TLS, verifying that the peer
// is member id.
func (t *tcpTransport) dialTLS(c net.Conn, id uint64) (net.Conn, error) {
	if t.tls == nil {
		return c, nil
	}
	tc := tls.Client(c, t.tls.Client(t.nameOf(id)))
	ctx, cancel := context.WithTimeout(context.Background(), tlsHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return tc, nil
}

// PeerServerCredentials are the transport credentials of the peer gRPC
// server under PeerTLS: the peer listener (SplitPeerListener) did the TLS
// handshake already, so these only hand its state to gRPC, where the
// handlers check it.
func PeerServerCredentials() credentials.TransportCredentials { return handshaken{} }

type handshaken struct{}

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cs, ok := c.(connState)
	if !ok {
		return nil, nil, errors.New("raftnode: a peer connection without TLS")
	}
	return c, credentials.TLSInfo{State: cs.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("raftnode: server credentials only")
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (h handshaken) Clone() credentials.TransportCredentials { return h }

func (handshaken) OverrideServerName(string) error { return nil }

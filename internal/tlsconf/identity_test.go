package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"slices"
	"testing"
)

func TestIdentity(t *testing.T) {
	cert := func(cn string, dns ...string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
	}
	root := cert("CA")
	verified := func(leaf *x509.Certificate) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf, root}}}
	}
	tests := []struct {
		name      string
		cs        tls.ConnectionState
		wantNames []string
		wantPeer  bool
		wantID    string
		wantOK    bool
	}{
		{name: "node", cs: verified(cert("n1", "n1", "localhost")), wantNames: []string{"n1", "localhost"}, wantPeer: true, wantID: "n1", wantOK: true},
		{name: "CN not among SANs", cs: verified(cert("n1", "node-1.example")), wantNames: []string{"node-1.example", "n1"}, wantPeer: true, wantID: "n1", wantOK: true},
		{name: "client", cs: verified(cert("admin")), wantNames: []string{"admin"}, wantPeer: true, wantID: "admin", wantOK: true},
		{name: "no CN", cs: verified(cert("", "n1")), wantNames: []string{"n1"}, wantPeer: true},
		{name: "no names", cs: verified(cert("")), wantPeer: true},
		{name: "unverified", cs: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert("n1", "n1")}}},
		{name: "empty chain", cs: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{}}}},
		{name: "no certificate", cs: tls.ConnectionState{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names, ok := PeerIdentity(tt.cs)
			if ok != tt.wantPeer || !slices.Equal(names, tt.wantNames) {
				t.Errorf("PeerIdentity = %q, %v; want %q, %v", names, ok, tt.wantNames, tt.wantPeer)
			}
			id, ok := ClientIdentity(tt.cs)
			if id != tt.wantID || ok != tt.wantOK {
				t.Errorf("ClientIdentity = %q, %v; want %q, %v", id, ok, tt.wantID, tt.wantOK)
			}
		})
	}
}

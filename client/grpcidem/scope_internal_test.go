package grpcidem

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"

	"google.golang.org/grpc/credentials"
)

func TestVerifiedCommonName(t *testing.T) {
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: "alice"}}
	verified := tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf}}}
	unverified := tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}
	for _, tc := range []struct {
		name string
		ai   credentials.AuthInfo
		want string
	}{
		{"None", nil, ""},
		{"TLSInfo", credentials.TLSInfo{State: verified}, "alice"},
		{"TLSInfoPointer", &credentials.TLSInfo{State: verified}, "alice"},
		{"NilTLSInfoPointer", (*credentials.TLSInfo)(nil), ""},
		{"Unverified", credentials.TLSInfo{State: unverified}, ""},
		{"OtherAuthInfo", otherAuthInfo{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := verifiedCommonName(tc.ai); got != tc.want {
				t.Fatalf("verifiedCommonName: got %q; want %q", got, tc.want)
			}
		})
	}
}

type otherAuthInfo struct{}

func (otherAuthInfo) AuthType() string { return "other" }

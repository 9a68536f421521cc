package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// testCA is a certificate authority for tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

// newTestCA returns a fresh self-signed CA.
func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a leaf certificate with CommonName cn for usage, signed by
// ca; a server certificate is also valid for the name "bufnet".
func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"bufnet"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestMutualTLS runs calls over real TLS handshakes, to show that a client
// certificate counts when the server verified it and only then.
func TestMutualTLS(t *testing.T) {
	ca := newTestCA(t, "keystore test CA")
	rogue := newTestCA(t, "rogue CA")
	serverCert := ca.issue(t, "server", x509.ExtKeyUsageServerAuth)
	orders := ca.issue(t, "orders", x509.ExtKeyUsageClientAuth)
	billing := ca.issue(t, "billing", x509.ExtKeyUsageClientAuth)
	rogueOrders := rogue.issue(t, "orders", x509.ExtKeyUsageClientAuth)

	a, _, _ := newTestAuthorizer(t)
	// verifying checks client certificates when given; requesting asks for
	// them but verifies nothing, so they must not count.
	verifying := startServer(t, a, credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientCAs:    ca.pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
	}))
	requesting := startServer(t, a, credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequestClientCert,
	}))
	client := func(certs ...tls.Certificate) credentials.TransportCredentials {
		return credentials.NewTLS(&tls.Config{RootCAs: ca.pool, ServerName: "bufnet", Certificates: certs})
	}

	tests := []struct {
		name   string
		server func(credentials.TransportCredentials) *grpc.ClientConn
		creds  credentials.TransportCredentials
		auth   []string
		method string
		ns     string
		want   string
		code   codes.Code
		msg    string
	}{
		{name: "cert on its namespace", server: verifying, creds: client(orders), method: methodUse, ns: "orders", want: "orders-service"},
		{name: "cert on another namespace", server: verifying, creds: client(orders), method: methodUse, ns: "payments", code: codes.PermissionDenied, msg: `permission denied: principal "orders-service" may not use namespace "payments"`},
		{name: "cert on admin method", server: verifying, creds: client(orders), method: methodAdmin, code: codes.PermissionDenied},
		{name: "token wins over cert", server: verifying, creds: client(orders), auth: []string{"Bearer " + tokPayments}, method: methodUse, ns: "payments", want: "payments-service"},
		{name: "token wins over cert, denied", server: verifying, creds: client(orders), auth: []string{"Bearer " + tokPayments}, method: methodUse, ns: "orders", code: codes.PermissionDenied},
		{name: "token over TLS without cert", server: verifying, creds: client(), auth: []string{"Bearer " + tokPayments}, method: methodUse, ns: "payments", want: "payments-service"},
		{name: "no cert", server: verifying, creds: client(), method: methodUse, ns: "orders", code: codes.Unauthenticated, msg: msgMissing},
		{name: "cert of unknown CN", server: verifying, creds: client(billing), method: methodUse, ns: "orders", code: codes.Unauthenticated, msg: msgUnknown},
		{name: "unverified cert", server: requesting, creds: client(orders), method: methodUse, ns: "orders", code: codes.Unauthenticated, msg: msgMissing},
		{name: "unverified cert of another CA", server: requesting, creds: client(rogueOrders), method: methodUse, ns: "orders", code: codes.Unauthenticated, msg: msgMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := tt.server(tt.creds)
			out := new(wrapperspb.StringValue)
			err := conn.Invoke(withAuth(t.Context(), tt.auth...), tt.method, wrapperspb.String(tt.ns), out)
			checkStatus(t, err, tt.code, tt.msg)
			if err == nil && out.GetValue() != tt.want {
				t.Errorf("answer = %q; want %q", out.GetValue(), tt.want)
			}
		})
	}
}

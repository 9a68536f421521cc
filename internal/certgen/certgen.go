package certgen

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// CA is a certificate authority held in memory. Its key is never written
// to disk by this package.
type CA struct {
	// Cert is the CA's self-signed certificate.
	Cert *x509.Certificate
	// Key signs the certificates the CA issues.
	Key crypto.Signer
	// CertPEM is Cert, PEM-encoded.
	CertPEM []byte
}

// Leaf is an issued certificate and its private key, both PEM-encoded in the
// forms tls.X509KeyPair reads.
type Leaf struct {
	// CertPEM is the certificate as a "CERTIFICATE" block.
	CertPEM []byte
	// KeyPEM is the private key as a PKCS #8 "PRIVATE KEY" block.
	KeyPEM []byte
}

// IssueOptions says what a certificate issued by CA.Issue holds.
type IssueOptions struct {
	// CommonName is the subject's common name.
	CommonName string
	// DNSNames are the DNS subject alternative names.
	DNSNames []string
	// IPs are the IP subject alternative names.
	IPs []net.IP
	// Server adds the ExtKeyUsageServerAuth extended key usage.
	Server bool
	// Client adds the ExtKeyUsageClientAuth extended key usage.
	Client bool
	// NotBefore is the start of validity; zero means an hour ago.
	NotBefore time.Time
	// NotAfter is the end of validity; zero means a year from now.
	NotAfter time.Time
}

// Errors returned by Issue.
var (
	// ErrNoUsage is returned when neither Server nor Client is set: a
	// certificate without extended key usages would be valid for any use.
	ErrNoUsage = errors.New("certgen: certificate needs server or client usage")
	// ErrValidity is returned when NotAfter is not after NotBefore.
	ErrValidity = errors.New("certgen: not-after must be after not-before")
)

// NewCA makes a self-signed CA named commonName, valid from an hour ago for
// ten years, allowed to sign leaf certificates only (path length zero).
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certgen: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("certgen: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certgen: parse CA certificate: %w", err)
	}
	return &CA{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}

// Issue makes a new key pair and a certificate for it signed by ca. At
// least one of opts.Server and opts.Client must be set.
func (ca *CA) Issue(opts IssueOptions) (*Leaf, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("certgen: issue with an incomplete CA")
	}
	var usages []x509.ExtKeyUsage
	if opts.Server {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	if opts.Client {
		usages = append(usages, x509.ExtKeyUsageClientAuth)
	}
	if len(usages) == 0 {
		return nil, ErrNoUsage
	}
	now := time.Now()
	notBefore, notAfter := opts.NotBefore, opts.NotAfter
	if notBefore.IsZero() {
		notBefore = now.Add(-time.Hour)
	}
	if notAfter.IsZero() {
		notAfter = now.AddDate(1, 0, 0)
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("%w (not-before %s, not-after %s)", ErrValidity,
			notBefore.Format(time.RFC3339), notAfter.Format(time.RFC3339))
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certgen: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: opts.CommonName},
		DNSNames:              opts.DNSNames,
		IPAddresses:           opts.IPs,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usages,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("certgen: create certificate for %q: %w", opts.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("certgen: encode key: %w", err)
	}
	return &Leaf{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// newSerial returns a random positive 128-bit serial number (RFC 5280 allows
// up to 20 octets).
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certgen: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

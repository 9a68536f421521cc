package tlsconf

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Errors of this package, to be tested with errors.Is.
var (
	// ErrNoFiles is returned by Load when Files names no file at all.
	ErrNoFiles = errors.New("tlsconf: no files given")
	// ErrNoCertificate is returned by a server handshake when the Source
	// has no certificate (Files.Cert is empty).
	ErrNoCertificate = errors.New("tlsconf: no certificate configured")
	// ErrNoCA is returned by a handshake that must verify the other side
	// when the Source has no CA (Files.CA is empty). There is no fallback
	// to the system's roots.
	ErrNoCA = errors.New("tlsconf: no CA configured")
)

// defaultWatchInterval is the polling interval of Watch when it is given
// none.
const defaultWatchInterval = 10 * time.Second

// Files names the PEM files a Source reads.
type Files struct {
	// Cert is the certificate file: the leaf first, then any
	// intermediates. Empty for a pure client.
	Cert string
	// Key is the private key of Cert's leaf. Set exactly when Cert is.
	Key string
	// CA holds the certificates of the CAs trusted to sign the other
	// side's certificate. Empty for a server that does not verify clients;
	// such a Source cannot verify anything.
	CA string
}

// Source holds the TLS material read from Files and hands the current one
// to the configurations it makes. It is safe for concurrent use.
type Source struct {
	files  Files
	logger *slog.Logger

	// cur is the material in effect; never nil after Load. Handshakes read
	// it without locking.
	cur atomic.Pointer[material]

	// mu serializes reloads, so that material read earlier never replaces
	// material read later, and guards lastFailure.
	mu sync.Mutex
	// lastFailure identifies the last failure Watch saw (the failing
	// content's hash, or the read error), so that it neither retries nor
	// logs the same failure on every tick.
	lastFailure string
}

// material is what the files held at one time. It is immutable once built.
type material struct {
	cert    *tls.Certificate // nil without Files.Cert; cert.Leaf is set
	pool    *x509.CertPool   // nil without Files.CA
	caCerts []*x509.Certificate
	sum     string // hash of the files' contents
}

// Load reads and checks the files now: the certificate and key must parse
// and match, and the CA file must hold at least one certificate and nothing
// else. logger may be nil. The caller keeps the Source for the life of the
// configurations made from it.
func Load(f Files, logger *slog.Logger) (*Source, error) {
	if f == (Files{}) {
		return nil, ErrNoFiles
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("tlsconf: a certificate file needs a key file and the reverse")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Source{files: f, logger: logger.With("component", "tlsconf")}
	raw, sum, err := s.read()
	if err != nil {
		return nil, err
	}
	m, err := parse(raw, sum)
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	s.logMaterial("tls material loaded", m)
	return s, nil
}

// Reload re-reads the files. If they cannot be read or are invalid, the
// material in effect stays, and Reload logs and returns the error. If they
// changed, new handshakes use the new material from now on and Reload logs
// it at Info (subject and not-after of the certificate, never key bytes).
// The daemon calls it on SIGHUP.
func (s *Source) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	raw, sum, err := s.read()
	if err == nil {
		if sum == s.cur.Load().sum {
			s.logger.Debug("tls material unchanged")
			s.lastFailure = ""
			return nil
		}
		err = s.install(raw, sum)
	}
	if err != nil {
		s.logger.Error("tls reload failed, keeping the current material", "err", err)
	}
	return err
}

// Watch polls the files every interval (ten seconds if every is not
// positive) and reloads them when their content changed, until ctx is done.
// It blocks; run it in a goroutine whose lifetime ctx bounds. A failure is
// logged once and not retried until the content changes again (a half-done
// rotation, with a new certificate but the old key, is taken when the key
// arrives). Watch and Reload (on SIGHUP) can be used together.
func (s *Source) Watch(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = defaultWatchInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.poll()
		}
	}
}

// NotAfter returns the end of validity of the current certificate, or the
// zero time if the Source has none.
func (s *Source) NotAfter() time.Time {
	m := s.cur.Load()
	if m.cert == nil {
		return time.Time{}
	}
	return m.cert.Leaf.NotAfter
}

// poll is one tick of Watch.
func (s *Source) poll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	raw, sum, err := s.read()
	if err != nil {
		if key := "read: " + err.Error(); key != s.lastFailure {
			s.lastFailure = key
			s.logger.Error("tls reload failed, keeping the current material", "err", err)
		}
		return
	}
	if sum == s.cur.Load().sum || sum == s.lastFailure {
		return
	}
	if err := s.install(raw, sum); err != nil {
		s.lastFailure = sum
		s.logger.Error("tls reload failed, keeping the current material", "err", err)
	}
}

// install parses raw and makes it the material in effect. s.mu is held.
func (s *Source) install(raw [3][]byte, sum string) error {
	m, err := parse(raw, sum)
	if err != nil {
		return err
	}
	s.cur.Store(m)
	s.lastFailure = ""
	s.logMaterial("tls material reloaded", m)
	return nil
}

// logMaterial logs what m holds at Info, and warns about a certificate
// outside its validity period.
func (s *Source) logMaterial(msg string, m *material) {
	attrs := []any{"files", s.files, "ca_certs", len(m.caCerts)}
	if m.cert != nil {
		leaf := m.cert.Leaf
		attrs = append(attrs, "subject", leaf.Subject.String(), "dns_names", leaf.DNSNames, "not_after", leaf.NotAfter)
		if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
			s.logger.Warn("tls certificate is outside its validity period", "subject", leaf.Subject.String(),
				"not_before", leaf.NotBefore, "not_after", leaf.NotAfter)
		}
	}
	s.logger.Info(msg, attrs...)
}

// read returns the contents of the cert, key and CA files (nil for those
// not configured) and a hash of them all.
func (s *Source) read() (raw [3][]byte, sum string, err error) {
	h := sha256.New()
	for i, path := range [3]string{s.files.Cert, s.files.Key, s.files.CA} {
		if path != "" {
			if raw[i], err = os.ReadFile(path); err != nil {
				return raw, "", fmt.Errorf("tlsconf: %w", err)
			}
		}
		// The length prefix keeps the hash of (a, bc) apart from (ab, c).
		binary.Write(h, binary.BigEndian, uint64(len(raw[i])))
		h.Write(raw[i])
	}
	return raw, hex.EncodeToString(h.Sum(nil)), nil
}

// parse checks and builds the material of raw (cert, key, CA contents).
func parse(raw [3][]byte, sum string) (*material, error) {
	m := &material{sum: sum}
	certPEM, keyPEM, caPEM := raw[0], raw[1], raw[2]
	if certPEM != nil {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: certificate and key: %w", err)
		}
		if cert.Leaf == nil {
			if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
				return nil, fmt.Errorf("tlsconf: certificate: %w", err)
			}
		}
		m.cert = &cert
	}
	if caPEM != nil {
		certs, err := parseCerts(caPEM)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: CA file: %w", err)
		}
		m.pool = x509.NewCertPool()
		for _, c := range certs {
			m.pool.AddCert(c)
		}
		m.caCerts = certs
	}
	return m, nil
}

// parseCerts parses PEM data whose blocks must all be certificates, at
// least one. Unlike x509.CertPool.AppendCertsFromPEM, it does not skip
// blocks it cannot parse. Text outside the blocks (comments in a bundle) is
// ignored, as pem.Decode does.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	return certs, nil
}

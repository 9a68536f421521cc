// Package certgen makes X.509 certificates for tests and local clusters: a
// self-signed CA and the node and client certificates it issues, all ECDSA
// P-256, in pure Go (no openssl, no network).
//
// It is not a production PKI: the CA's key lives only in memory (nothing
// here writes it to disk), there is no revocation, and the validity periods
// are long. The gencerts command under cmd/ wraps it for operators.
package certgen

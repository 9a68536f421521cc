package httpidem

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"net/http"
	"strings"
)

// Scopes: whose key a request's key is. Every keystore key the middleware
// uses is a scope prefix followed by the key the caller sent:
//
//	scoped:    base64url(SHA-256(scope))[:22] + ":" + key
//	anonymous: "-:" + key
//
// NB: base64url has no ':', so the first ':' of a stored key is at index 1
// for the anonymous scope and at index 22 for every other: no anonymous
// key can equal a scoped one, and two scopes share keys only if their
// hashes share 132 bits.

// MaxKeyLen is the longest idempotency key, in bytes, that the middleware
// accepts: keystore's limit of 255 less the longest scope prefix. It is the
// same for every caller, scoped or not.
const MaxKeyLen = maxStoreKeyLen - scopedPrefixLen

const (
	// scopeHashLen is how many base64url characters of the scope's
	// SHA-256 the prefix keeps (132 bits).
	scopeHashLen    = 22
	scopedPrefixLen = scopeHashLen + 1
	// anonymousPrefix begins the keys of requests without an identity.
	anonymousPrefix = "-:"
)

// Scopes that DefaultScope gives, by the identity they come from. The kind
// is part of the scope, so that no certificate name can share a scope with
// an Authorization value.
const (
	certScopeKind          = "x509-cn:"
	authorizationScopeKind = "authorization:"
)

// DefaultScope names the caller of r as the middleware does unless
// WithScope or WithoutScope says otherwise. It returns, in this order:
//
//   - "x509-cn:" + the CommonName of the client certificate, when the TLS
//     handshake verified it (r.TLS.VerifiedChains is not empty) and the
//     CommonName is not empty;
//   - "authorization:" + base64url(SHA-256(v)), where v is the
//     Authorization header's values joined by "\n", when v is not blank;
//   - ok false otherwise: the request has no identity.
//
// The scope never holds the Authorization value itself, so a WithScope
// function that wraps DefaultScope may log what it returns.
func DefaultScope(r *http.Request) (scope string, ok bool) {
	if cn := verifiedCommonName(r.TLS); cn != "" {
		return certScopeKind + cn, true
	}
	if v := strings.Join(r.Header.Values("Authorization"), "\n"); strings.TrimSpace(v) != "" {
		return authorizationScopeKind + digest(v), true
	}
	return "", false
}

// verifiedCommonName returns the CommonName of the verified client
// certificate of a TLS connection, "" if it has none. A certificate the
// server did not verify (PeerCertificates alone) names no one.
func verifiedCommonName(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.CommonName
}

// scopePrefix returns the prefix of the keys of a scope; scoped false is
// the anonymous scope.
func scopePrefix(scope string, scoped bool) string {
	if !scoped {
		return anonymousPrefix
	}
	return digest(scope)[:scopeHashLen] + ":"
}

// digest is base64url(SHA-256(s)), unpadded.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

package httpidem

import (
	"net/http"
	"strings"

	keyscope "github.com/keystore-dev/keystore/client/internal/scope"
)

// Scopes: whose key a request's key is. Every keystore key the middleware
// uses is a scope prefix followed by the key the caller sent, in the format
// client/internal/scope defines (grpcidem's too).

// MaxKeyLen is the longest idempotency key, in bytes, that the middleware
// accepts: keystore's limit of 255 less the longest scope prefix. It is the
// same for every caller, scoped or not.
const MaxKeyLen = keyscope.MaxKeyLen

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
	if cn := verifiedCommonName(r); cn != "" {
		return keyscope.CertKind + cn, true
	}
	if v := strings.Join(r.Header.Values("Authorization"), "\n"); strings.TrimSpace(v) != "" {
		return keyscope.AuthorizationKind + keyscope.Digest(v), true
	}
	return "", false
}

// verifiedCommonName is the CommonName of r's verified client certificate,
// "" if it has none.
func verifiedCommonName(r *http.Request) string {
	if r.TLS == nil {
		return ""
	}
	return keyscope.VerifiedCommonName(r.TLS.VerifiedChains)
}

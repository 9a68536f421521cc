package grpcidem

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Scopes: whose key a call's key is. Every keystore key the interceptor
// uses is a scope prefix followed by the key the caller sent:
//
//	scoped:    base64url(SHA-256(scope))[:22] + ":" + key
//	anonymous: "-:" + key
//
// NB: base64url has no ':', so the first ':' of a stored key is at index 1
// for the anonymous scope and at index 22 for every other: no anonymous
// key can equal a scoped one, and two scopes share keys only if their
// hashes share 132 bits. The format is httpidem's too.

// MaxKeyLen is the longest idempotency key, in bytes, that the
// interceptor accepts: keystore's limit of 255 less the longest scope
// prefix. It is the same for every caller, scoped or not.
const MaxKeyLen = maxStoreKeyLen - scopedPrefixLen

const (
	// scopeHashLen is how many base64url characters of the scope's
	// SHA-256 the prefix keeps (132 bits).
	scopeHashLen    = 22
	scopedPrefixLen = scopeHashLen + 1
	// anonymousPrefix begins the keys of calls without an identity.
	anonymousPrefix = "-:"
)

// Scopes that DefaultScope gives, by the identity they come from. The kind
// is part of the scope, so that no certificate name can share a scope with
// an authorization value.
const (
	certScopeKind          = "x509-cn:"
	authorizationScopeKind = "authorization:"
)

// authorizationMetadataKey is the request metadata that carries
// credentials, as the HTTP Authorization header does.
const authorizationMetadataKey = "authorization"

// DefaultScope names the caller of the call whose server context is ctx,
// as the interceptor does unless WithScope or WithoutScope says otherwise.
// It returns, in this order:
//
//   - "x509-cn:" + the CommonName of the client certificate, when the
//     connection's TLS handshake verified it (the peer's AuthInfo is a
//     credentials.TLSInfo whose State.VerifiedChains is not empty) and the
//     CommonName is not empty;
//   - "authorization:" + base64url(SHA-256(v)), where v is the
//     authorization metadata's values joined by "\n", when v is not blank;
//   - ok false otherwise: the call has no identity.
//
// The scope never holds the authorization value itself, so a WithScope
// function that wraps DefaultScope may log what it returns.
func DefaultScope(ctx context.Context) (scope string, ok bool) {
	if p, ok := peer.FromContext(ctx); ok {
		if cn := verifiedCommonName(p.AuthInfo); cn != "" {
			return certScopeKind + cn, true
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := strings.Join(md.Get(authorizationMetadataKey), "\n"); strings.TrimSpace(v) != "" {
		return authorizationScopeKind + digest(v), true
	}
	return "", false
}

// verifiedCommonName returns the CommonName of the verified client
// certificate of a connection, "" if it has none. A certificate the server
// did not verify (PeerCertificates alone) names no one.
func verifiedCommonName(ai credentials.AuthInfo) string {
	var info *credentials.TLSInfo
	switch ai := ai.(type) {
	case credentials.TLSInfo:
		info = &ai
	case *credentials.TLSInfo:
		info = ai
	}
	if info == nil {
		return ""
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return ""
	}
	return chains[0][0].Subject.CommonName
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

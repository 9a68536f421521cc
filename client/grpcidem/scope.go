package grpcidem

import (
	"context"
	"strings"

	keyscope "github.com/keystore-dev/keystore/client/internal/scope"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Scopes: whose key a call's key is. Every keystore key the interceptor
// uses is a scope prefix followed by the key the caller sent, in the format
// client/internal/scope defines (httpidem's too).

// MaxKeyLen is the longest idempotency key, in bytes, that the
// interceptor accepts: keystore's limit of 255 less the longest scope
// prefix. It is the same for every caller, scoped or not.
const MaxKeyLen = keyscope.MaxKeyLen

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
			return keyscope.CertKind + cn, true
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := strings.Join(md.Get(authorizationMetadataKey), "\n"); strings.TrimSpace(v) != "" {
		return keyscope.AuthorizationKind + keyscope.Digest(v), true
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
	return keyscope.VerifiedCommonName(info.State.VerifiedChains)
}

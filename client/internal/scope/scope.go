// Package scope is the one definition of how httpidem and grpcidem turn a
// caller's identity and its idempotency key into a keystore key, so that
// both integrations store the same key for the same caller and key:
//
//	scoped:    base64url(SHA-256(scope))[:22] + ":" + key
//	anonymous: "-:" + key
//
// NB: base64url has no ':', so the first ':' of a stored key is at index 1
// for the anonymous scope and at index 22 for every other: no anonymous
// key can equal a scoped one, and two scopes share keys only if their
// hashes share 132 bits.
package scope

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
)

const (
	// hashLen is how many base64url characters of the scope's SHA-256 a
	// prefix keeps (132 bits).
	hashLen = 22
	// PrefixLen is the longest prefix, a scoped one.
	PrefixLen = hashLen + 1
	// Anonymous begins the keys of callers without an identity.
	Anonymous = "-:"
	// StoreMaxKeyLen is keystore's longest key.
	StoreMaxKeyLen = 255
	// MaxKeyLen is the longest idempotency key a caller may send: the
	// store's limit less the longest prefix, the same for every caller.
	MaxKeyLen = StoreMaxKeyLen - PrefixLen
)

// Kinds of the scopes the default identity gives. The kind is part of the
// scope, so that no certificate name can share a scope with an
// authorization value.
const (
	CertKind          = "x509-cn:"
	AuthorizationKind = "authorization:"
)

// Prefix returns the prefix of the keys of scope; scoped false is the
// anonymous scope.
func Prefix(scope string, scoped bool) string {
	if !scoped {
		return Anonymous
	}
	return Digest(scope)[:hashLen] + ":"
}

// Digest is base64url(SHA-256(s)), unpadded: how an authorization value
// enters a scope (never in clear).
func Digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// VerifiedCommonName returns the CommonName of the leaf of the first
// verified chain, "" if there is none: a certificate the server did not
// verify names no one.
func VerifiedCommonName(chains [][]*x509.Certificate) string {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return ""
	}
	return chains[0][0].Subject.CommonName
}

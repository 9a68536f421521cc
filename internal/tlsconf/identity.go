package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"slices"
)

// PeerIdentity returns the names of the other side's verified leaf
// certificate: its DNS SANs, then its CommonName if not among them, without
// duplicates or empty names. ok is
// false when the connection has no verified certificate; names may be empty
// even when ok is true. A member is identified by its name among these
// names.
//
// Only chains verified by crypto/tls count: on a listener made by
// ServerConfig with tls.VerifyClientCertIfGiven or
// tls.RequireAndVerifyClientCert, that is the client's certificate. On the
// dialing side of ClientConfig, VerifiedChains is empty and ok is false
// (see ClientConfig).
func PeerIdentity(cs tls.ConnectionState) (names []string, ok bool) {
	leaf := verifiedLeaf(cs)
	if leaf == nil {
		return nil, false
	}
	for _, n := range append(slices.Clone(leaf.DNSNames), leaf.Subject.CommonName) {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names, true
}

// ClientIdentity returns the CommonName of the client's verified leaf
// certificate, which names the client (as in etcd). ok is false when the
// connection has no verified certificate or its CommonName is empty.
func ClientIdentity(cs tls.ConnectionState) (string, bool) {
	leaf := verifiedLeaf(cs)
	if leaf == nil || leaf.Subject.CommonName == "" {
		return "", false
	}
	return leaf.Subject.CommonName, true
}

// verifiedLeaf returns the leaf of the first verified chain in cs, or nil.
func verifiedLeaf(cs tls.ConnectionState) *x509.Certificate {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil
	}
	return cs.VerifiedChains[0][0]
}

package client

import (
	"crypto/sha256"
	"encoding/binary"
)

// Fingerprint returns the SHA-256 of a request's method, route and canonical
// body bytes: what keystore compares to tell a retry (same fingerprint) from
// a different request reusing a key. Each part is length-prefixed, so no two
// different triples hash alike by concatenation. The caller chooses what is
// canonical (e.g. deterministic protobuf, or JSON with sorted keys).
func Fingerprint(method, route string, body []byte) []byte {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(method), []byte(route), body} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	return h.Sum(nil)
}

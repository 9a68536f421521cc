package main

import (
	"bytes"
	"errors"
	"fmt"
)

// etcd and Redis store a record as one value: "P|"+fp while the claim is in
// progress, "C|"+fp+"|"+response once completed. The fingerprint has a fixed
// length, so the response may hold any byte.

func pendingValue(fp []byte) []byte {
	return append([]byte("P|"), fp...)
}

func completedValue(fp, resp []byte) []byte {
	v := make([]byte, 0, 3+len(fp)+len(resp))
	v = append(v, "C|"...)
	v = append(v, fp...)
	v = append(v, '|')
	return append(v, resp...)
}

var errFingerprintMismatch = errors.New("fingerprint mismatch")

// parseValue turns a stored value into the answer to a Claim that did not
// acquire, checking the fingerprint as keystore does on the server.
func parseValue(v, fp []byte) (claim, error) {
	if len(v) < 2+len(fp) || v[1] != '|' {
		return claim{}, fmt.Errorf("malformed record (%d bytes)", len(v))
	}
	if !bytes.Equal(v[2:2+len(fp)], fp) {
		return claim{}, errFingerprintMismatch
	}
	switch v[0] {
	case 'P':
		return claim{}, nil
	case 'C':
		rest := v[2+len(fp):]
		if len(rest) < 1 || rest[0] != '|' {
			return claim{}, fmt.Errorf("malformed completed record (%d bytes)", len(v))
		}
		return claim{Completed: true, Response: rest[1:]}, nil
	}
	return claim{}, fmt.Errorf("unknown record state %q", v[0])
}

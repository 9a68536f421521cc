package httpidem

import (
	"errors"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// errKeyMissing: the request carries no key header.
var errKeyMissing = errors.New("missing")

// parseKey returns the idempotency key of a request from its header field
// values. The draft defines the field as a Structured Field String
// (RFC 8941), e.g. "8e03978e-40d5"; a bare token-like value, as many clients
// send, is accepted too and means the same key. The error of an invalid key
// completes the sentence "The header ...".
func parseKey(values []string, maxLen int) (string, error) {
	switch {
	case len(values) == 0:
		return "", errKeyMissing
	case len(values) > 1:
		return "", errors.New("must appear once")
	}
	v := values[0]
	if strings.HasPrefix(v, `"`) {
		s, ok := parseSFString(v)
		if !ok {
			return "", errors.New("is not a well-formed structured field string")
		}
		v = s
	}
	if err := validKey(v, maxLen); err != nil {
		return "", err
	}
	return v, nil
}

// validKey applies keystore's rule for keys: 1-maxLen bytes of printable
// UTF-8 (docs/contract.md).
func validKey(k string, maxLen int) error {
	if len(k) == 0 || len(k) > maxLen {
		return errors.New("must be 1-" + strconv.Itoa(maxLen) + " bytes long")
	}
	if !utf8.ValidString(k) {
		return errors.New("must be valid UTF-8")
	}
	for _, r := range k {
		if !unicode.IsPrint(r) {
			return errors.New("must contain only printable characters")
		}
	}
	return nil
}

// parseSFString parses an RFC 8941 sf-string that makes up the whole value:
// DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE, where unescaped is
// printable ASCII. Parameters are not accepted.
func parseSFString(v string) (string, bool) {
	if len(v) < 2 || v[0] != '"' {
		return "", false
	}
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		ch := v[i]
		switch {
		case ch == '\\':
			i++
			if i >= len(v) || (v[i] != '"' && v[i] != '\\') {
				return "", false
			}
			b.WriteByte(v[i])
		case ch == '"':
			return b.String(), i == len(v)-1
		case ch < 0x20 || ch > 0x7e:
			return "", false
		default:
			b.WriteByte(ch)
		}
	}
	return "", false // no closing quote
}

package api

import (
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// validator collects field violations of one request, so the caller learns
// every problem at once.
type validator struct{ v []fieldError }

func (c *validator) add(field, format string, args ...any) {
	c.v = append(c.v, fieldError{field, fmt.Sprintf(format, args...)})
}

func (c *validator) err() error {
	if len(c.v) == 0 {
		return nil
	}
	return invalidArgument(c.v)
}

func (c *validator) namespace(ns string) {
	if len(ns) == 0 || len(ns) > maxNamespaceLen {
		c.add("namespace", "must be 1-%d characters (got %d)", maxNamespaceLen, len(ns))
		return
	}
	for i := 0; i < len(ns); i++ {
		ch := ns[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '_' || ch == '-') {
			c.add("namespace", "must contain only [a-z0-9._-] (invalid character at byte %d)", i)
			return
		}
	}
}

func (c *validator) key(k string) {
	if len(k) == 0 || len(k) > maxKeyLen {
		c.add("key", "must be 1-%d bytes (got %d)", maxKeyLen, len(k))
		return
	}
	if !utf8.ValidString(k) {
		c.add("key", "must be valid UTF-8")
		return
	}
	for i, r := range k {
		if !unicode.IsPrint(r) {
			c.add("key", "must be printable (non-printable character at byte %d)", i)
			return
		}
	}
}

func (c *validator) fingerprint(fp []byte) {
	if len(fp) > maxFingerprintLen {
		c.add("fingerprint", "must be at most %d bytes (got %d)", maxFingerprintLen, len(fp))
	}
}

func (c *validator) owner(o string) {
	if len(o) > maxOwnerLen {
		c.add("owner", "must be at most %d bytes (got %d)", maxOwnerLen, len(o))
	}
}

func (c *validator) token(t uint64) {
	if t == 0 {
		c.add("token", "is required (the token Claim returned)")
	}
}

// duration checks an optional positive duration up to max; absent or zero
// means def.
func (c *validator) duration(field string, d *durationpb.Duration, def, max time.Duration) time.Duration {
	if d == nil || (d.Seconds == 0 && d.Nanos == 0) {
		return def
	}
	if err := d.CheckValid(); err != nil {
		c.add(field, "is not a valid duration")
		return 0
	}
	v := d.AsDuration()
	switch {
	case v < 0:
		c.add(field, "must not be negative (got %s)", v)
	case v > max:
		c.add(field, "must be at most %s (got %s)", max, v)
	}
	return v
}

func (c *validator) response(r *keystorev1.Response, maxBody, maxMeta int) {
	if r == nil {
		return
	}
	if len(r.Body) > maxBody {
		c.add("response.body", "must be at most %d bytes (got %d)", maxBody, len(r.Body))
	}
	size := 0
	for k, v := range r.Metadata {
		if k == "" {
			c.add("response.metadata", "keys must not be empty")
		}
		size += len(k) + len(v)
	}
	if size > maxMeta {
		c.add("response.metadata", "must total at most %d bytes of keys and values (got %d)", maxMeta, size)
	}
}

func (c *validator) consistency(v keystorev1.Consistency) {
	if _, ok := keystorev1.Consistency_name[int32(v)]; !ok {
		c.add("consistency", "unknown value %d", int32(v))
	}
}

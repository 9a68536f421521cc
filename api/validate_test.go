package api

import (
	"strings"
	"testing"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ruleCase is one input to one field rule. want is "" when the input is
// valid; otherwise a text the violation's description and the status
// message must both contain (the limit, where there is one).
type ruleCase struct {
	name  string
	apply func(*validator)
	want  string
}

// runRuleCases runs each case in a fresh validator and checks that a valid
// input yields no error and an invalid one yields INVALID_ARGUMENT with a
// single BadRequest violation on field.
func runRuleCases(t *testing.T, field string, cases []ruleCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var v validator
			tc.apply(&v)
			err := v.err()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("got %v; want no violation", err)
				}
				return
			}
			if got := status.Code(err); got != codes.InvalidArgument {
				t.Fatalf("got code %v (%v); want %v", got, err, codes.InvalidArgument)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, field) || !strings.Contains(msg, tc.want) {
				t.Errorf("got message %q; want it to name %q and contain %q", msg, field, tc.want)
			}
			_, br := statusDetails(t, err)
			fvs := br.GetFieldViolations()
			if len(fvs) != 1 {
				t.Fatalf("got field violations %v; want exactly one on %q", fvs, field)
			}
			if fvs[0].GetField() != field {
				t.Errorf("got violation on field %q; want %q", fvs[0].GetField(), field)
			}
			if !strings.Contains(fvs[0].GetDescription(), tc.want) {
				t.Errorf("got description %q; want it to contain %q", fvs[0].GetDescription(), tc.want)
			}
		})
	}
}

func namespaceCase(name, ns, want string) ruleCase {
	return ruleCase{name, func(v *validator) { v.namespace(ns) }, want}
}

func TestValidateNamespace(t *testing.T) {
	runRuleCases(t, "namespace", []ruleCase{
		namespaceCase("one char", "a", ""),
		namespaceCase("all allowed characters", "abc-xyz.0123_456789", ""),
		namespaceCase("64 chars", strings.Repeat("a", 64), ""),
		namespaceCase("65 chars", strings.Repeat("a", 65), "64"),
		namespaceCase("empty", "", "64"),
		namespaceCase("uppercase", "Payments", "[a-z0-9._-]"),
		namespaceCase("space", "pay ments", "[a-z0-9._-]"),
		namespaceCase("slash", "pay/ments", "[a-z0-9._-]"),
		namespaceCase("colon", "pay:ments", "[a-z0-9._-]"),
		namespaceCase("non-ascii letter", "paymentś", "[a-z0-9._-]"),
		namespaceCase("nul", "pay\x00", "[a-z0-9._-]"),
	})
}

func keyCase(name, key, want string) ruleCase {
	return ruleCase{name, func(v *validator) { v.key(key) }, want}
}

func TestValidateKey(t *testing.T) {
	runRuleCases(t, "key", []ruleCase{
		keyCase("one byte", "k", ""),
		keyCase("255 bytes", strings.Repeat("k", 255), ""),
		keyCase("256 bytes", strings.Repeat("k", 256), "255"),
		keyCase("empty", "", "255"),
		// 127 two-byte runes are 254 bytes; one more makes 256 bytes but
		// only 128 characters: the limit is in bytes.
		keyCase("255 bytes of multibyte runes", strings.Repeat("я", 127)+"k", ""),
		keyCase("256 bytes of multibyte runes", strings.Repeat("я", 128), "255"),
		keyCase("cyrillic", "ключ-1", ""),
		keyCase("space", "order 42", ""),
		keyCase("punctuation", `a/b:c?d=e&f#g"h'`, ""),
		keyCase("emoji", "order-🙂", ""),
		keyCase("tab", "order\t42", "printable"),
		keyCase("newline", "order\n", "printable"),
		keyCase("nul", "order\x00", "printable"),
		keyCase("del", "order\x7f", "printable"),
		keyCase("invalid utf-8", "order\xff", "UTF-8"),
		keyCase("truncated utf-8", "ключ"[:3], "UTF-8"),
	})
}

func TestValidateFingerprint(t *testing.T) {
	fp := func(name string, n int, want string) ruleCase {
		return ruleCase{name, func(v *validator) { v.fingerprint(make([]byte, n)) }, want}
	}
	runRuleCases(t, "fingerprint", []ruleCase{
		fp("empty", 0, ""),
		fp("32 bytes", 32, ""),
		fp("64 bytes", 64, ""),
		fp("65 bytes", 65, "64"),
	})
}

func TestValidateOwner(t *testing.T) {
	owner := func(name string, n int, want string) ruleCase {
		return ruleCase{name, func(v *validator) { v.owner(strings.Repeat("o", n)) }, want}
	}
	runRuleCases(t, "owner", []ruleCase{
		owner("empty", 0, ""),
		owner("256 bytes", 256, ""),
		owner("257 bytes", 257, "256"),
	})
}

func TestValidateToken(t *testing.T) {
	token := func(name string, tok uint64, want string) ruleCase {
		return ruleCase{name, func(v *validator) { v.token(tok) }, want}
	}
	runRuleCases(t, "token", []ruleCase{
		token("zero", 0, "required"),
		token("one", 1, ""),
		token("max", ^uint64(0), ""),
	})
}

func TestValidateDuration(t *testing.T) {
	const def, max = 30 * time.Second, time.Hour
	for _, tc := range []struct {
		name    string
		d       *durationpb.Duration
		wantVal time.Duration // checked only when the duration is valid
		want    string        // as in ruleCase
	}{
		{"nil is default", nil, def, ""},
		{"zero is default", &durationpb.Duration{}, def, ""},
		{"one nanosecond", &durationpb.Duration{Nanos: 1}, time.Nanosecond, ""},
		{"300ms", durationpb.New(300 * time.Millisecond), 300 * time.Millisecond, ""},
		{"max", durationpb.New(time.Hour), time.Hour, ""},
		{"max plus 1ns", durationpb.New(time.Hour + time.Nanosecond), 0, "1h0m0s"},
		{"far above max", durationpb.New(1000 * time.Hour), 0, "1h0m0s"},
		{"beyond time.Duration range", &durationpb.Duration{Seconds: 315_576_000_000}, 0, "1h0m0s"},
		{"negative", durationpb.New(-time.Second), 0, "negative"},
		{"negative nanos", &durationpb.Duration{Nanos: -1}, 0, "negative"},
		{"nanos out of range", &durationpb.Duration{Seconds: 1, Nanos: 1_000_000_000}, 0, "valid"},
		{"nanos sign differs from seconds", &durationpb.Duration{Seconds: 1, Nanos: -1}, 0, "valid"},
		{"seconds out of range", &durationpb.Duration{Seconds: 315_576_000_001}, 0, "valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got time.Duration
			runRuleCases(t, "lease", []ruleCase{{
				name:  "rule",
				apply: func(v *validator) { got = v.duration("lease", tc.d, def, max) },
				want:  tc.want,
			}})
			if tc.want == "" && got != tc.wantVal {
				t.Errorf("duration(%v): got %v; want %v", tc.d, got, tc.wantVal)
			}
		})
	}
}

func TestValidateResponse(t *testing.T) {
	cfg := Config{}.WithDefaults()
	maxBody, maxMeta := cfg.MaxBodyBytes, cfg.MaxMetadataBytes
	resp := func(name string, r *keystorev1.Response, want string) ruleCase {
		return ruleCase{name, func(v *validator) { v.response(r, maxBody, maxMeta) }, want}
	}
	// meta returns one metadata entry whose key and value total n bytes.
	meta := func(n int) map[string]string {
		return map[string]string{"k": strings.Repeat("v", n-1)}
	}
	runRuleCases(t, "response.body", []ruleCase{
		resp("nil response", nil, ""),
		resp("empty response", &keystorev1.Response{}, ""),
		resp("body at limit", &keystorev1.Response{Body: make([]byte, maxBody)}, ""),
		resp("body over limit", &keystorev1.Response{Body: make([]byte, maxBody+1)}, "1048576"),
	})
	runRuleCases(t, "response.metadata", []ruleCase{
		resp("metadata at limit", &keystorev1.Response{Metadata: meta(maxMeta)}, ""),
		resp("metadata at limit in sum", &keystorev1.Response{Metadata: map[string]string{
			"a": strings.Repeat("v", maxMeta/2-1), "b": strings.Repeat("v", maxMeta/2-1),
		}}, ""),
		resp("metadata over limit", &keystorev1.Response{Metadata: meta(maxMeta + 1)}, "65536"),
		resp("metadata over limit in sum", &keystorev1.Response{Metadata: map[string]string{
			"a": strings.Repeat("v", maxMeta/2), "b": strings.Repeat("v", maxMeta/2),
		}}, "65536"),
		resp("metadata key counts", &keystorev1.Response{Metadata: map[string]string{
			strings.Repeat("k", maxMeta): "v",
		}}, "65536"),
		resp("metadata empty value", &keystorev1.Response{Metadata: map[string]string{"k": ""}}, ""),
		resp("metadata empty key", &keystorev1.Response{Metadata: map[string]string{"": "v"}}, "empty"),
	})
}

func TestValidateConsistency(t *testing.T) {
	cons := func(name string, c keystorev1.Consistency, want string) ruleCase {
		return ruleCase{name, func(v *validator) { v.consistency(c) }, want}
	}
	runRuleCases(t, "consistency", []ruleCase{
		cons("unspecified", keystorev1.Consistency_CONSISTENCY_UNSPECIFIED, ""),
		cons("linearizable", keystorev1.Consistency_CONSISTENCY_LINEARIZABLE, ""),
		cons("stale", keystorev1.Consistency_CONSISTENCY_STALE, ""),
		cons("unknown 3", keystorev1.Consistency(3), "3"),
		cons("unknown -1", keystorev1.Consistency(-1), "-1"),
	})
}

func TestValidateSeveralFields(t *testing.T) {
	var v validator
	v.namespace("Bad")
	v.key("")
	v.fingerprint(make([]byte, 65))
	v.owner(strings.Repeat("o", 257))
	v.token(0)
	v.duration("lease", durationpb.New(-time.Second), time.Second, time.Hour)
	v.duration("retention", durationpb.New(time.Hour+1), time.Second, time.Hour)
	v.duration("wait", &durationpb.Duration{Nanos: 2_000_000_000}, 0, time.Hour)
	v.response(&keystorev1.Response{Body: make([]byte, 11), Metadata: map[string]string{"": "v"}}, 10, 64)
	v.consistency(7)
	// Valid fields add nothing.
	v.namespace("good")
	v.key("good")
	v.token(1)

	err := v.err()
	if got := status.Code(err); got != codes.InvalidArgument {
		t.Fatalf("got code %v; want %v", got, codes.InvalidArgument)
	}
	want := []string{"namespace", "key", "fingerprint", "owner", "token", "lease", "retention", "wait",
		"response.body", "response.metadata", "consistency"}
	_, br := statusDetails(t, err)
	var got []string
	for _, fv := range br.GetFieldViolations() {
		got = append(got, fv.GetField())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("got violations on %v; want %v", got, want)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "namespace") || !strings.Contains(msg, "10 more") {
		t.Errorf("got message %q; want the first violation and a count of 10 more", msg)
	}
}

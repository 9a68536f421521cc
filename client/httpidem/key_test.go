package httpidem

import (
	"errors"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		name    string
		values  []string
		maxLen  int
		want    string
		wantErr bool
	}{
		{"Bare", []string{"order-42"}, 255, "order-42", false},
		{"UUID", []string{"8e03978e-40d5-43e8-bc93-6894a57f9324"}, 255, "8e03978e-40d5-43e8-bc93-6894a57f9324", false},
		{"SFString", []string{`"8e03978e-40d5"`}, 255, "8e03978e-40d5", false},
		{"SFStringEscapes", []string{`"a\"b\\c"`}, 255, `a"b\c`, false},
		{"SpaceInside", []string{"a b"}, 255, "a b", false},
		{"UnicodePrintable", []string{"clé-✓"}, 255, "clé-✓", false},
		{"MaxLen", []string{strings.Repeat("k", 255)}, 255, strings.Repeat("k", 255), false},
		{"OverMaxLen", []string{strings.Repeat("k", 256)}, 255, "", true},
		{"OverScopedMaxLen", []string{"abcdef"}, 5, "", true},
		{"Empty", []string{""}, 255, "", true},
		{"SFEmpty", []string{`""`}, 255, "", true},
		{"Control", []string{"a\x01b"}, 255, "", true},
		{"NotUTF8", []string{"\xff"}, 255, "", true},
		{"NotPrintableRune", []string{"a\u200bb"}, 255, "", true},
		{"Twice", []string{"a", "a"}, 255, "", true},
		{"SFUnterminated", []string{`"abc`}, 255, "", true},
		{"SFBadEscape", []string{`"a\nb"`}, 255, "", true},
		{"SFNonASCII", []string{`"é"`}, 255, "", true},
		{"SFTrailing", []string{`"abc" x`}, 255, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseKey(tc.values, tc.maxLen)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("parseKey(%q): got %q, %v; want %q (error %v)", tc.values, got, err, tc.want, tc.wantErr)
			}
		})
	}
	if _, err := parseKey(nil, 255); !errors.Is(err, errKeyMissing) {
		t.Fatalf("parseKey(nil): got %v; want errKeyMissing", err)
	}
}

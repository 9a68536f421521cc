package auth

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

func TestHashToken(t *testing.T) {
	tests := []struct {
		token, want string
	}{
		// Known SHA-256 values.
		{"test", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	}
	for _, tt := range tests {
		if got := HashToken(tt.token); got != tt.want {
			t.Errorf("HashToken(%q) = %s; want %s", tt.token, got, tt.want)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	pol, err := ParsePolicy([]byte(testPolicy()))
	if err != nil {
		t.Fatalf("ParsePolicy: %v", err)
	}
	if got, want := pol.Len(), 4; got != want {
		t.Errorf("Len() = %d; want %d", got, want)
	}

	tests := []struct {
		name      string
		principal *Principal
		admin     bool
		may       []string
		mayNot    []string
	}{
		{"payments-service", pol.byToken(tokPayments), false, []string{"payments", "refunds"}, []string{"orders", "", "*", "Payments"}},
		// The ops hash is written in upper case in the file.
		{"ops", pol.byToken(tokOps), true, []string{"payments", "orders", "anything", ""}, nil},
		{"auditor", pol.byToken(tokAuditor), true, nil, []string{"payments", "orders", "*"}},
		{"orders-service", pol.certs["orders"], false, []string{"orders"}, []string{"payments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.principal
			if p == nil {
				t.Fatal("principal not found")
			}
			if p.Name() != tt.name {
				t.Errorf("Name() = %q; want %q", p.Name(), tt.name)
			}
			if p.Admin() != tt.admin {
				t.Errorf("Admin() = %v; want %v", p.Admin(), tt.admin)
			}
			for _, ns := range tt.may {
				if !p.MayUse(ns) {
					t.Errorf("MayUse(%q) = false; want true", ns)
				}
			}
			for _, ns := range tt.mayNot {
				if p.MayUse(ns) {
					t.Errorf("MayUse(%q) = true; want false", ns)
				}
			}
		})
	}
	if p := pol.byToken("not a token"); p != nil {
		t.Errorf("byToken(unknown) = %q; want nil", p.Name())
	}
}

func TestParsePolicyErrors(t *testing.T) {
	h1 := HashToken("one")
	h2 := HashToken("two")
	tests := []struct {
		name string
		yaml string
		want string // substring of the error
	}{
		{"empty file", "", "the file is empty"},
		{"only comments", "# nothing here\n", "the file is empty"},
		{"unknown top-level field", "principal:\n  - name: a\n", "field principal not found"},
		{"unknown principal field", "principals:\n  - name: a\n    token_sha256: " + h1 + "\n    namespace: [a]\n", "field namespace not found"},
		{"two documents", "principals:\n  - {name: a, token_sha256: " + h1 + ", namespaces: [a]}\n---\nprincipals: []\n", "exactly one YAML document"},
		{"no principals", "principals: []\n", "principals: none listed"},
		{"principals missing", "{}\n", "principals: none listed"},
		{"wrong type", "principals:\n  - {name: a, token_sha256: " + h1 + ", namespaces: a}\n", "cannot unmarshal"},
		{"missing name", "principals:\n  - {token_sha256: " + h1 + ", namespaces: [a]}\n", "principals[0]: name: required"},
		{
			"duplicate name",
			"principals:\n  - {name: a, token_sha256: " + h1 + ", namespaces: [a]}\n  - {name: a, token_sha256: " + h2 + ", namespaces: [a]}\n",
			`principals[1] "a": name: duplicates principals[0] "a"`,
		},
		{"no credential", "principals:\n  - {name: a, namespaces: [a]}\n", `principals[0] "a": token_sha256: one of token_sha256 or cert_cn is required`},
		{"both credentials", "principals:\n  - {name: a, token_sha256: " + h1 + ", cert_cn: a, namespaces: [a]}\n", `principals[0] "a": token_sha256: give token_sha256 or cert_cn, not both`},
		{"short hash", "principals:\n  - {name: a, token_sha256: abc123, namespaces: [a]}\n", `principals[0] "a": token_sha256: must be 64 hex characters, the SHA-256 of the token (got 6 characters)`},
		{"long hash", "principals:\n  - {name: a, token_sha256: " + h1 + "00, namespaces: [a]}\n", "(got 66 characters)"},
		{"not hex", "principals:\n  - {name: a, token_sha256: " + strings.Repeat("z", 64) + ", namespaces: [a]}\n", "token_sha256: must be 64 hex characters, the SHA-256 of the token (not hex)"},
		{"empty token hash", "principals:\n  - {name: a, token_sha256: " + HashToken("") + ", namespaces: [a]}\n", "SHA-256 of the empty token"},
		{
			// Upper and lower case of one hash are one hash.
			"duplicate token hash",
			"principals:\n  - {name: a, token_sha256: " + h1 + ", namespaces: [a]}\n  - {name: b, token_sha256: " + strings.ToUpper(h1) + ", namespaces: [b]}\n",
			`principals[1] "b": token_sha256: duplicates that of principals[0] "a"`,
		},
		{
			"duplicate cert_cn",
			"principals:\n  - {name: a, cert_cn: x, namespaces: [a]}\n  - {name: b, cert_cn: x, namespaces: [b]}\n",
			`principals[1] "b": cert_cn: duplicates that of principals[0] "a"`,
		},
		{"no namespaces", "principals:\n  - {name: a, token_sha256: " + h1 + "}\n", `principals[0] "a": namespaces: required unless admin is true`},
		{"empty namespaces", "principals:\n  - {name: a, cert_cn: a, namespaces: []}\n", `principals[0] "a": namespaces: required unless admin is true`},
		{"pattern", "principals:\n  - {name: a, cert_cn: a, namespaces: [a, \"pay*\"]}\n", `principals[0] "a": namespaces[1]: "pay*": patterns are not supported`},
		{"upper case namespace", "principals:\n  - {name: a, cert_cn: a, namespaces: [Payments]}\n", `namespaces[0]: "Payments": a namespace is 1-64 characters of [a-z0-9._-]`},
		{"empty namespace", "principals:\n  - {name: a, cert_cn: a, namespaces: [\"\"]}\n", `namespaces[0]: "": a namespace is 1-64 characters`},
		{"long namespace", "principals:\n  - {name: a, cert_cn: a, namespaces: [" + strings.Repeat("a", 65) + "]}\n", "a namespace is 1-64 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol, err := ParsePolicy([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("ParsePolicy succeeded with %d principals; want error containing %q", pol.Len(), tt.want)
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("error %q does not wrap ErrInvalidPolicy", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q; want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestParsePolicyAccepts(t *testing.T) {
	h1 := HashToken("one")
	tests := []struct {
		name string
		yaml string
	}{
		{"admin without namespaces", "principals:\n  - {name: a, token_sha256: " + h1 + ", admin: true}\n"},
		{"upper-case hash", "principals:\n  - {name: a, token_sha256: " + strings.ToUpper(h1) + ", namespaces: [a]}\n"},
		{"star with names", "principals:\n  - {name: a, cert_cn: a, namespaces: [\"*\", b]}\n"},
		{"namespace charset", "principals:\n  - {name: a, cert_cn: a, namespaces: [a.b_c-9, " + strings.Repeat("x", 64) + "]}\n"},
		{"explicit document start", "---\nprincipals:\n  - {name: a, cert_cn: a, namespaces: [a]}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParsePolicy([]byte(tt.yaml)); err != nil {
				t.Errorf("ParsePolicy: %v", err)
			}
		})
	}
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	good := writePolicy(t, dir, testPolicy())
	if _, err := LoadPolicy(good); err != nil {
		t.Errorf("LoadPolicy(good): %v", err)
	}
	_, err := LoadPolicy(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadPolicy(missing) = %v; want fs.ErrNotExist", err)
	}
	bad := writePolicy(t, dir, "principals: []\n")
	if _, err := LoadPolicy(bad); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("LoadPolicy(bad) = %v; want ErrInvalidPolicy", err)
	}
}

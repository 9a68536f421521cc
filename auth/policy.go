package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ErrInvalidPolicy is wrapped by every error ParsePolicy and LoadPolicy
// return for a policy that is not acceptable (as opposed to a file that
// cannot be read).
var ErrInvalidPolicy = errors.New("auth: invalid policy")

// AllNamespaces is the namespaces entry that grants every namespace.
const AllNamespaces = "*"

// maxNamespaceLen mirrors the contract's namespace rule (1–64 characters of
// [a-z0-9._-]), which api enforces on requests. An entry that breaks it
// could never match a request, so the policy refuses it.
const maxNamespaceLen = 64

// emptyTokenHash is HashToken(""). Authenticate never accepts an empty
// token, so a principal with this hash could never be used: it is a mistake.
var emptyTokenHash = sha256.Sum256(nil)

// HashToken returns the hex SHA-256 of a bearer token: the token_sha256
// value an operator puts in the policy file for it.
//
// Tokens must be random, at least 128 bits (e.g. `openssl rand -hex 32`).
// Against a guess space that large a fast hash is as strong as a slow one,
// and a fast one is needed: the hash is computed on every request. That is
// why keystore uses a plain SHA-256 and not bcrypt. Do not use passwords or
// other low-entropy strings as tokens.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Policy is a parsed, validated policy file: the principals and what each
// may do. A Policy is immutable and safe for concurrent use.
type Policy struct {
	// tokens holds the principals with a token_sha256, in file order; every
	// one is compared with a presented token (see Policy.byToken).
	tokens []*Principal
	// certs maps cert_cn to its principal. A map is fine here: the
	// CommonName of a verified certificate is not a secret.
	certs map[string]*Principal
	n     int
}

// Len returns the number of principals in p.
func (p *Policy) Len() int { return p.n }

// Principal is an authenticated caller: one entry of the policy. A
// Principal is immutable and safe for concurrent use.
type Principal struct {
	name       string
	tokenHash  []byte // decoded token_sha256; nil for a cert principal
	certCN     string
	all        bool // namespaces contains "*"
	namespaces map[string]bool
	admin      bool
}

// Name returns the principal's name from the policy file.
func (p *Principal) Name() string { return p.name }

// Admin reports whether the principal may call admin RPCs.
func (p *Principal) Admin() bool { return p.admin }

// MayUse reports whether the principal may use namespace.
func (p *Principal) MayUse(namespace string) bool {
	return p.all || p.namespaces[namespace]
}

// policyFile is the YAML form of a policy.
type policyFile struct {
	Principals []principalFile `yaml:"principals"`
}

// principalFile is the YAML form of one principal.
type principalFile struct {
	Name        string   `yaml:"name"`
	TokenSHA256 string   `yaml:"token_sha256"`
	CertCN      string   `yaml:"cert_cn"`
	Namespaces  []string `yaml:"namespaces"`
	Admin       bool     `yaml:"admin"`
}

// LoadPolicy reads and parses the policy file at path.
func LoadPolicy(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: read policy: %w", err)
	}
	return ParsePolicy(b)
}

// ParsePolicy parses and validates a policy file's contents. Its errors
// wrap ErrInvalidPolicy and name the offending principal (index and name)
// and field.
func ParsePolicy(b []byte) (*Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f policyFile
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the file is empty", ErrInvalidPolicy)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalidPolicy, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: the file must hold exactly one YAML document", ErrInvalidPolicy)
	}
	if len(f.Principals) == 0 {
		return nil, fmt.Errorf("%w: principals: none listed", ErrInvalidPolicy)
	}

	pol := &Policy{certs: make(map[string]*Principal), n: len(f.Principals)}
	names := make(map[string]int)
	tokens := make(map[string]int) // decoded hash → index; the file is not secret
	certs := make(map[string]int)
	for i, pf := range f.Principals {
		bad := func(field, format string, args ...any) error {
			who := fmt.Sprintf("principals[%d]", i)
			if pf.Name != "" {
				who += fmt.Sprintf(" %q", pf.Name)
			}
			return fmt.Errorf("%w: %s: %s: %s", ErrInvalidPolicy, who, field, fmt.Sprintf(format, args...))
		}
		other := func(j int) string {
			return fmt.Sprintf("principals[%d] %q", j, f.Principals[j].Name)
		}

		if pf.Name == "" {
			return nil, bad("name", "required")
		}
		if j, ok := names[pf.Name]; ok {
			return nil, bad("name", "duplicates %s", other(j))
		}
		names[pf.Name] = i

		p := &Principal{name: pf.Name, admin: pf.Admin, namespaces: make(map[string]bool)}
		switch {
		case pf.TokenSHA256 == "" && pf.CertCN == "":
			return nil, bad("token_sha256", "one of token_sha256 or cert_cn is required")
		case pf.TokenSHA256 != "" && pf.CertCN != "":
			return nil, bad("token_sha256", "give token_sha256 or cert_cn, not both")
		case pf.TokenSHA256 != "":
			h, err := decodeTokenHash(pf.TokenSHA256)
			if err != nil {
				return nil, bad("token_sha256", "%v", err)
			}
			if j, ok := tokens[string(h)]; ok {
				return nil, bad("token_sha256", "duplicates that of %s", other(j))
			}
			tokens[string(h)] = i
			p.tokenHash = h
			pol.tokens = append(pol.tokens, p)
		default:
			if j, ok := certs[pf.CertCN]; ok {
				return nil, bad("cert_cn", "duplicates that of %s", other(j))
			}
			certs[pf.CertCN] = i
			p.certCN = pf.CertCN
			pol.certs[pf.CertCN] = p
		}

		if len(pf.Namespaces) == 0 && !pf.Admin {
			return nil, bad("namespaces", "required unless admin is true")
		}
		for k, ns := range pf.Namespaces {
			if ns == AllNamespaces {
				p.all = true
				continue
			}
			if err := checkNamespaceEntry(ns); err != nil {
				return nil, bad(fmt.Sprintf("namespaces[%d]", k), "%v", err)
			}
			p.namespaces[ns] = true
		}
	}
	return pol, nil
}

// decodeTokenHash decodes a token_sha256 value: 64 hex digits, either case.
func decodeTokenHash(s string) ([]byte, error) {
	if len(s) != 2*sha256.Size {
		return nil, fmt.Errorf("must be %d hex characters, the SHA-256 of the token (got %d characters)", 2*sha256.Size, len(s))
	}
	h, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("must be %d hex characters, the SHA-256 of the token (not hex)", 2*sha256.Size)
	}
	if bytes.Equal(h, emptyTokenHash[:]) {
		return nil, errors.New("is the SHA-256 of the empty token, which is never accepted")
	}
	return h, nil
}

// checkNamespaceEntry checks one namespaces entry other than "*".
func checkNamespaceEntry(ns string) error {
	if strings.Contains(ns, "*") {
		return fmt.Errorf("%q: patterns are not supported; give exact names or \"*\" alone", ns)
	}
	if len(ns) == 0 || len(ns) > maxNamespaceLen {
		return fmt.Errorf("%q: a namespace is 1-%d characters of [a-z0-9._-]", ns, maxNamespaceLen)
	}
	for i := 0; i < len(ns); i++ {
		c := ns[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%q: a namespace is 1-%d characters of [a-z0-9._-]", ns, maxNamespaceLen)
		}
	}
	return nil
}

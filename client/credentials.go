package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Credentials: the transport (Config.TLS, or plaintext) and the bearer
// token (Config.Token or Config.TokenFile) every connection of the client
// uses, seeds and discovered endpoints alike, for every call, MemberList
// and Status included.

// tokenFileCheck is how often, at most, a Config.TokenFile is read again.
// It is read on a call, never in the background: a client without calls
// does not touch it.
const tokenFileCheck = 2 * time.Second

// credentialOptions returns the dial options of cfg's transport and token:
// TLS or plaintext, and the token on every call. It refuses a token without
// TLS unless InsecureToken.
func credentialOptions(cfg Config) ([]grpc.DialOption, error) {
	transport := insecure.NewCredentials()
	if cfg.TLS != nil {
		// NB: NewTLS copies cfg.TLS. With ServerName empty, gRPC sets it
		// per connection to the endpoint's host, which crypto/tls then
		// verifies.
		transport = credentials.NewTLS(cfg.TLS)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(transport)}
	var token func() string
	switch {
	case cfg.Token != "" && cfg.TokenFile != "":
		return nil, errors.New("keystore: set Config.Token or Config.TokenFile, not both")
	case cfg.Token != "":
		if err := checkToken(cfg.Token); err != nil {
			return nil, fmt.Errorf("keystore: Config.Token: %w", err)
		}
		token = func() string { return cfg.Token }
	case cfg.TokenFile != "":
		f, err := openTokenFile(cfg.TokenFile, tokenFileCheck)
		if err != nil {
			return nil, err
		}
		token = f.token
	default:
		return opts, nil
	}
	if cfg.TLS == nil && !cfg.InsecureToken {
		return nil, errors.New("keystore: a token needs Config.TLS: over plaintext anyone on the path can read it " +
			"(set Config.InsecureToken to send it anyway, for local testing only)")
	}
	return append(opts, grpc.WithPerRPCCredentials(&bearerToken{token: token, insecure: cfg.InsecureToken})), nil
}

// bearerToken sends "authorization: Bearer <token>" with every call.
type bearerToken struct {
	token    func() string // the current token; safe for concurrent use
	insecure bool          // allow plaintext connections (Config.InsecureToken)
}

// GetRequestMetadata returns the authorization header of one call.
func (b *bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token()}, nil
}

// RequireTransportSecurity makes gRPC refuse to send the token over a
// connection without TLS, unless Config.InsecureToken.
func (b *bearerToken) RequireTransportSecurity() bool { return !b.insecure }

// tokenFile is a token read from the first line of a file, and read again
// at most every period when asked for, so that a token rotated in the file
// is sent from the next call after that on. A read that fails, or finds no
// valid token (the file is being replaced, say), keeps the token in use;
// the next one is tried a period later.
type tokenFile struct {
	path  string
	every time.Duration

	mu      sync.Mutex
	cur     string
	checked time.Time // when cur was last read, or the read failed
}

// openTokenFile reads the token of path; it must be there now.
func openTokenFile(path string, every time.Duration) (*tokenFile, error) {
	tok, err := readTokenFile(path)
	if err != nil {
		return nil, fmt.Errorf("keystore: Config.TokenFile: %w", err)
	}
	return &tokenFile{path: path, every: every, cur: tok, checked: time.Now()}, nil
}

// token returns the current token, reading the file again if the last
// read is older than the period. A call that does holds the others up for
// one small file read.
func (f *tokenFile) token() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) >= f.every {
		f.checked = time.Now()
		if tok, err := readTokenFile(f.path); err == nil {
			f.cur = tok
		}
	}
	return f.cur
}

// readTokenFile returns the first line of the file at path, without
// surrounding white space.
func readTokenFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	tok := string(bytes.TrimSpace(line))
	if err := checkToken(tok); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return tok, nil
}

// checkToken refuses an empty token, and one that could not travel in a
// header value as it is: only visible ASCII characters, no spaces.
func checkToken(tok string) error {
	if tok == "" {
		return errors.New("empty token")
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("the token has a space or a character outside visible ASCII at byte %d", i)
		}
	}
	return nil
}

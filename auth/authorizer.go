package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// DefaultWatchInterval is how often Watch polls the policy file when given
// no positive interval.
const DefaultWatchInterval = 2 * time.Second

// Messages of the UNAUTHENTICATED errors. None repeats what the caller sent.
const (
	msgMissing   = "missing credentials: send authorization: Bearer <token> or a client certificate"
	msgMalformed = "malformed credentials: send exactly one authorization: Bearer <token>"
	msgUnknown   = "unknown credentials"
)

// Authorizer authenticates gRPC calls against the policy file it was
// created with, which it can reload without a restart. It is safe for
// concurrent use.
type Authorizer struct {
	path   string
	logger *slog.Logger
	policy atomic.Pointer[Policy]

	// mu serializes reloads, so that two never interleave their read and
	// their store, and guards the fields below.
	mu sync.Mutex
	// seen is the SHA-256 of the file contents last parsed, good or bad:
	// Watch skips contents it has already tried.
	seen [sha256.Size]byte
	// readErr is the text of Watch's last failure to read the file, so
	// that a lasting failure is logged once.
	readErr string
}

// NewAuthorizer loads the policy file at path and returns an Authorizer
// for it, or the error that makes the file unusable. A nil logger discards
// logs.
func NewAuthorizer(path string, logger *slog.Logger) (*Authorizer, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Authorizer{path: path, logger: logger.With("component", "auth")}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: read policy: %w", err)
	}
	a.seen = sha256.Sum256(b)
	pol, err := ParsePolicy(b)
	if err != nil {
		return nil, err
	}
	a.policy.Store(pol)
	a.logger.Info("auth policy loaded", "path", path, "principals", pol.Len())
	return a, nil
}

// Reload re-reads the policy file. On success the new policy applies to
// calls that start from then on; on error the previous policy stays in
// force, and the error is logged and returned.
func (a *Authorizer) Reload() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	b, err := os.ReadFile(a.path)
	if err != nil {
		err = fmt.Errorf("auth: read policy: %w", err)
		a.logger.Error("auth policy reload failed; keeping the previous policy", "path", a.path, "err", err)
		return err
	}
	return a.applyLocked(b)
}

// applyLocked parses b and, if it is a good policy, makes it the current
// one. a.mu must be held.
func (a *Authorizer) applyLocked(b []byte) error {
	a.seen = sha256.Sum256(b)
	pol, err := ParsePolicy(b)
	if err != nil {
		a.logger.Error("auth policy reload failed; keeping the previous policy", "path", a.path, "err", err)
		return err
	}
	a.policy.Store(pol)
	a.logger.Info("auth policy loaded", "path", a.path, "principals", pol.Len())
	return nil
}

// Watch polls the policy file every interval (DefaultWatchInterval if
// interval is not positive) and reloads it when its contents change. It
// blocks until ctx is done; run it in its own goroutine. Contents that fail
// to parse are logged once and retried only when they change again; the
// previous policy stays in force meanwhile.
func (a *Authorizer) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.poll()
		}
	}
}

// poll is one step of Watch.
func (a *Authorizer) poll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	b, err := os.ReadFile(a.path)
	if err != nil {
		if err.Error() != a.readErr {
			a.readErr = err.Error()
			a.logger.Warn("auth policy file unreadable; keeping the current policy", "path", a.path, "err", err)
		}
		return
	}
	a.readErr = ""
	if sha256.Sum256(b) == a.seen {
		return
	}
	_ = a.applyLocked(b) // logged by applyLocked
}

// Authenticate returns the principal the call in ctx authenticates as, or
// an UNAUTHENTICATED status error.
//
// With `authorization` metadata, exactly one value of the form
// "Bearer <token>" (scheme in any case) is accepted, and the token alone
// decides, whatever certificate the connection carries. Its SHA-256 is
// compared in constant time with that of every token principal. Without
// `authorization` metadata, the CommonName of the client certificate the
// TLS handshake verified is looked up among the cert_cn principals; a
// certificate that was not verified does not count.
func (a *Authorizer) Authenticate(ctx context.Context) (*Principal, error) {
	pol := a.policy.Load()
	md, _ := metadata.FromIncomingContext(ctx)
	switch vals := md.Get("authorization"); len(vals) {
	case 0:
		cn, ok := verifiedCommonName(ctx)
		if !ok {
			return nil, status.Error(codes.Unauthenticated, msgMissing)
		}
		if p, ok := pol.certs[cn]; ok && cn != "" {
			return p, nil
		}
		return nil, status.Error(codes.Unauthenticated, msgUnknown)
	case 1:
		token, ok := bearerToken(vals[0])
		if !ok {
			return nil, status.Error(codes.Unauthenticated, msgMalformed)
		}
		if p := pol.byToken(token); p != nil {
			return p, nil
		}
		return nil, status.Error(codes.Unauthenticated, msgUnknown)
	default:
		return nil, status.Error(codes.Unauthenticated, msgMalformed)
	}
}

// byToken returns the principal whose token hash is that of token, or nil.
//
// NB: it compares with every token principal, in constant time, and picks
// the match with a constant-time select: how long it takes does not depend
// on which principal matched, or on how much of a hash did.
func (p *Policy) byToken(token string) *Principal {
	sum := sha256.Sum256([]byte(token))
	match := -1
	for i, tp := range p.tokens {
		eq := subtle.ConstantTimeCompare(sum[:], tp.tokenHash)
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return nil
	}
	return p.tokens[match]
}

// bearerToken extracts the token of an "authorization" value of the form
// "Bearer <token>".
func bearerToken(v string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// verifiedCommonName returns the subject CommonName of the client
// certificate that the TLS handshake of the call's connection verified.
func verifiedCommonName(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return "", false
	}
	var state tls.ConnectionState
	switch info := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		state = info.State
	case *credentials.TLSInfo:
		if info == nil {
			return "", false
		}
		state = info.State
	default:
		return "", false
	}
	// NB: VerifiedChains, never PeerCertificates: a certificate the server
	// did not verify proves nothing.
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return "", false
	}
	return state.VerifiedChains[0][0].Subject.CommonName, true
}

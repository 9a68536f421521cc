// Package httpidem makes net/http handlers effectively-once with keystore,
// following the IETF Idempotency-Key header draft
// (draft-ietf-httpapi-idempotency-key-header).
//
// Middleware wraps a handler. A request it protects (POST and PATCH unless
// WithMethods says otherwise; other methods pass straight through) must
// carry an Idempotency-Key header, unique to the operation and the same on
// every retry of it. The first request with a key claims it in keystore,
// runs the handler while the claim's lease is kept alive, stores the
// response (status, headers and body) and sends it. Every retry by the
// same caller with the same key and the same request gets that response
// back, byte for byte, with the header Idempotent-Replayed: true, until
// the record's retention ends. The handler runs once per caller and key,
// whatever the retries and however many servers share the keystore
// cluster. Callers are told apart as Keys and callers says.
//
// A request is identified by client.Fingerprint of its method, its route
// (WithRoute; by default path and query) and its body, which the
// middleware reads (up to WithMaxBodyBytes) and then restores for the
// handler. The key may be sent as a structured field string, as the draft
// defines it ("abc"), or bare (abc); both name the same key.
//
// # Answers
//
// Besides the handler's own response and its replays, the middleware
// answers with RFC 9457 problem details (Content-Type application/problem+json,
// members type, title, status and detail; the types are the Problem
// constants):
//
//   - 400 ProblemKeyMissing: no key, on a protected method (unless
//     WithKeyRequired(false), which lets such requests run unprotected).
//   - 400 ProblemKeyInvalid: the key is not 1-232 (MaxKeyLen) bytes of
//     printable UTF-8.
//   - 401 ProblemUnauthenticated: RequireScope is set and the caller could
//     not be identified (see Keys and callers).
//   - 413 ProblemBodyTooLarge: the body is over WithMaxBodyBytes.
//   - 409 ProblemInProgress, with Retry-After: another request with the key
//     is being processed (after waiting up to WithWait for it). Retry-After
//     is the whole seconds until its lease ends, at most 5.
//   - 422 ProblemKeyReused: the key was used for a different request.
//   - 503 ProblemUnavailable, with Retry-After: keystore could not be
//     reached; the handler did not run.
//   - 409 ProblemClaimLost: the handler ran but the claim was lost while it
//     ran (another request may run it again); its effects may need to be
//     reconciled.
//   - 409 ProblemResponseNotStored: to retries of a request whose response
//     was too large to store (see below).
//   - 400 ProblemBodyUnreadable and 500 ProblemInternal: the body could not
//     be read; the middleware is misconfigured (e.g. a WithScope function
//     returned ok with an empty scope).
//
// Problem details never carry internal error text; WithLogger receives it.
//
// # What is stored
//
// Every response the handler writes is stored and replayed, errors
// included (a 400 or 404 is an answer too), except transient ones: a 5xx or
// 429 status releases the claim, so a retry runs the handler again. So
// does a panic (which then goes on up), and a handler that returns without
// writing anything after its caller went away. Headers are stored under
// their canonical names with every value in order (so two Set-Cookie
// headers replay as two); headers set after WriteHeader, trailers and
// 1xx responses are not. The whole response is buffered until it is
// stored: Flush sends nothing and Hijack is not supported. A response over
// the store's limits (1 MiB body, 64 KiB headers by default) is sent to
// its caller, and retries get 409 ProblemResponseNotStored instead.
//
// # Keys and callers
//
// Keys live in the keystore namespace of WithNamespace, scoped by caller.
// The draft asks a server to look keys up by its client's identity as
// well as the key, so that no client can replay another's response, or
// block its request, by sending the same key. Middleware does so by
// default: it names the caller of each request with DefaultScope, and keys
// of two scopes never meet. DefaultScope takes, in this order:
//
//   - the CommonName of the client's TLS certificate, if the server
//     verified it (r.TLS.VerifiedChains);
//   - the Authorization header, hashed: its value is neither stored nor
//     logged;
//   - else the request has no identity.
//
// Requests with no identity share one anonymous scope: any of them may
// replay or block the others' requests, as every request could before
// scopes. RequireScope answers them 401 ProblemUnauthenticated instead.
//
// WithScope replaces DefaultScope, e.g. with the account an authentication
// middleware found. Give one when callers authenticate some other way, and
// when the Authorization header is not the same on every retry of a
// request (refreshed OAuth access tokens, short-lived JWTs): with
// DefaultScope, a retry with a new token has a new scope and runs the
// handler again. Give one too when the header carries a guessable secret
// (Basic credentials): keystore would hold an unsalted hash of it, open to
// a dictionary attack by whoever can read the store. WithoutScope puts every request in the anonymous scope;
// use it only when one trust domain uses the service.
//
// The keystore key of a request is its scope's prefix and then the key it
// sent:
//
//	with an identity: base64url(SHA-256(scope))[:22] + ":" + key
//	anonymous:        "-:" + key
//
// where scope is what the scope function returned (DefaultScope's are
// "x509-cn:" + CommonName and "authorization:" + base64url(SHA-256(the
// header's values joined by "\n")); base64url is unpadded). No two scopes
// share a prefix (but for a 132-bit hash collision), and no prefix is "-:".
// Hence the limit of MaxKeyLen (232) bytes on keys, keystore's 255 less the
// longest prefix, whatever the caller. Keys stored before scopes were
// introduced (the bare key, or WithKeyScope's former length-prefixed form)
// are not looked up: a request retried across the upgrade runs again.
package httpidem

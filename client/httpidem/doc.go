// Package httpidem makes net/http handlers effectively-once with keystore,
// following the IETF Idempotency-Key header draft
// (draft-ietf-httpapi-idempotency-key-header).
//
// Middleware wraps a handler. A request it protects (POST and PATCH unless
// WithMethods says otherwise; other methods pass straight through) must
// carry an Idempotency-Key header, unique to the operation and the same on
// every retry of it. The first request with a key claims it in keystore,
// runs the handler while the claim's lease is kept alive, stores the
// response (status, headers and body) and sends it. Every retry with the
// same key and the same request gets that response back, byte for byte,
// with the header Idempotent-Replayed: true, until the record's retention
// ends. The handler runs once per key, whatever the retries and however
// many servers share the keystore cluster.
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
//   - 400 ProblemKeyInvalid: the key is not 1-255 bytes of printable UTF-8.
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
//     be read; the middleware is misconfigured.
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
// Keys live in the keystore namespace of WithNamespace. The draft asks that
// keys be unique per client: WithKeyScope gives each caller (e.g. each
// authenticated account) keys of its own, so that no caller can replay or
// block another's request by reusing its key.
package httpidem

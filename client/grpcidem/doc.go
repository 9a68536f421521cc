// Package grpcidem makes unary gRPC methods effectively-once with keystore.
//
// UnaryServerInterceptor protects the methods named by WithMethods. A call
// to one of them that carries the idempotency-key request metadata runs
// its handler at most once per caller and key (per record lifetime, see
// keystore's retention; callers are told apart as Keys and callers says):
// the first call claims the key through client.Client.Do, runs the handler
// while the claim's lease is kept alive, and stores the outcome; every
// retry by the same caller with the same key and the same request gets
// that outcome back, byte for byte, with the response header
// idempotent-replayed: true.
//
// What is stored:
//   - a response message: its deterministic protobuf encoding and its full
//     type name, so the replay rebuilds the same message from
//     protoregistry.GlobalTypes (the message's Go package must be linked
//     into the server, which it is for the server's own methods);
//   - a deterministic error (any status code not listed below): the
//     google.rpc.Status with its code, message and details.
//
// A handler error with a transient code (UNAVAILABLE, DEADLINE_EXCEEDED,
// ABORTED, RESOURCE_EXHAUSTED, CANCELLED, INTERNAL, UNKNOWN) is not
// stored: the claim is released so that a retry runs the handler again.
//
// A request is identified by its method and its deterministic protobuf
// encoding: a call that reuses a key for a different request fails with
// FAILED_PRECONDITION and does not run. A call made while another call
// holds the key fails with ABORTED (after waiting up to WithWait for the
// other call to finish). Calls without the metadata run unprotected unless
// RequireKey is given.
//
// The handler's context ends with the call, as usual, but the claim does
// not: the lease is renewed until the handler returns, and what it returns
// is stored. A handler that finishes its work after the caller timed out
// is thus replayed to the caller's retry instead of run again. If the
// lease is lost all the same (the store unreachable for a whole lease),
// the handler's context is cancelled and the call fails with ABORTED.
//
// Only the response message or status is replayed: header and trailer
// metadata that the handler set on the first call are not stored.
//
// # Keys and callers
//
// Keys live in the keystore namespace of WithNamespace, scoped by caller,
// so that no caller can replay another's outcome, or block its call, by
// sending the same key (as the IETF Idempotency-Key draft asks of HTTP
// servers). The interceptor names the caller of each call with
// DefaultScope unless told otherwise, and keys of two scopes never meet.
// DefaultScope takes, in this order:
//
//   - the CommonName of the client's TLS certificate, if the server
//     verified it (credentials.TLSInfo with VerifiedChains, from
//     peer.FromContext: a server whose TLS config verifies client
//     certificates);
//   - the authorization request metadata, hashed: its value is never
//     stored;
//   - else the call has no identity.
//
// Calls with no identity share one anonymous scope: any of them may replay
// or block the others' calls, as every call could before scopes.
// RequireScope makes them fail with UNAUTHENTICATED instead.
//
// WithScope replaces DefaultScope, e.g. with the account an authentication
// interceptor put in the context. Give one when callers authenticate some
// other way, and when the authorization metadata is not the same on every
// retry of a call (refreshed OAuth access tokens, short-lived JWTs): with
// DefaultScope, a retry with a new token has a new scope and runs the
// handler again. Give one too when the metadata carries a guessable secret
// (Basic credentials): keystore would hold an unsalted hash of it, open to
// a dictionary attack by whoever can read the store. WithoutScope puts
// every call in the anonymous scope; use it only when one trust domain
// uses the service.
//
// The keystore key of a call is its scope's prefix and then the key it
// sent:
//
//	with an identity: base64url(SHA-256(scope))[:22] + ":" + key
//	anonymous:        "-:" + key
//
// where scope is what the scope function returned (DefaultScope's are
// "x509-cn:" + CommonName and "authorization:" + base64url(SHA-256(the
// metadata's values joined by "\n")); base64url is unpadded). No two scopes
// share a prefix (but for a 132-bit hash collision), and no prefix is "-:".
// Hence the limit of MaxKeyLen (232) bytes on keys, keystore's 255 less the
// longest prefix, whatever the caller; a longer key fails with
// INVALID_ARGUMENT. Keys stored before scopes were introduced (the bare
// key) are not looked up: a call retried across the upgrade runs again.
package grpcidem

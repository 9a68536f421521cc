// Package grpcidem makes unary gRPC methods effectively-once with keystore.
//
// UnaryServerInterceptor protects the methods named by WithMethods. A call
// to one of them that carries the idempotency-key request metadata runs
// its handler at most once per key (per record lifetime, see keystore's
// retention): the first call claims the key through client.Client.Do, runs
// the handler while the claim's lease is kept alive, and stores the
// outcome; every retry with the same key and the same request gets that
// outcome back, byte for byte, with the response header
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
package grpcidem

// Package client is the Go client of keystore, a replicated idempotency-key
// store, and the way most callers use it.
//
// New connects to every node it is given and routes around dead ones:
// calls that fail with UNAVAILABLE (or time out on a stuck node) are retried
// on the next node with backoff and jitter, never changing the key, the
// token or, for Claim, the request id that makes a retried Claim safe.
// Errors come back as sentinels for errors.Is (ErrFingerprintMismatch,
// ErrClaimLost, ErrInProgress, ErrAlreadyCompleted, ErrNotFound, ...).
//
// One endpoint of a live node is enough: the client asks the cluster for
// its members (ClusterService.MemberList, every Config.LeaderRefresh, the
// call that also tells it the leader) and calls them too, at the client
// addresses they publish, following members added, removed or readdressed.
// The endpoints it was given are always kept (one may be a load
// balancer's); one that leaves the membership is closed once the calls
// using it have returned. Endpoints lists the current ones.
// Config.NoDiscovery, or a negative LeaderRefresh, keeps the client to the
// endpoints it was given.
//
// Writes to one node travel over one BatchService.Stream: writes issued
// together share its messages (a sender with other writes in flight yields
// first, so that callers woken at once join it), and each result comes back
// as soon as the node has it; each write keeps its own result, deadline and retries. A
// write's attempt timeout (Config.AttemptTimeout) is enforced by the stream,
// one ticker per stream with writes in flight, not a timer per write.
// Against older servers writes beyond Config.MaxInflight travel together in
// BatchService.Batch calls instead.
//
// Connections are plaintext unless Config.TLS is set; every connection the
// client makes, to the endpoints it was given and to those it discovers,
// uses it. A server that checks credentials takes a bearer token
// (Config.Token, or Config.TokenFile, read again when it changes), sent
// with every call, or a client certificate in Config.TLS. New refuses a
// token over plaintext unless Config.InsecureToken. A call without an
// accepted credential fails with ErrUnauthenticated, one for a namespace
// the credential is not granted with ErrPermissionDenied; neither is
// retried.
//
// Do makes an operation effectively-once in one call: it claims the key,
// runs the operation only when the claim is acquired, keeps the lease alive
// while it runs, stores its response, and replays that response to every
// retry. Subpackages grpcidem and httpidem do the same for gRPC methods and
// HTTP handlers. Hold is the part of Do that keeps a claim alive, for
// callers that claim and complete keys themselves.
package client

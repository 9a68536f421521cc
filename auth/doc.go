// Package auth decides who may use which namespace of keystore: it
// authenticates each gRPC call against an operator's policy file and checks
// the namespaces and admin RPCs a caller is granted, the way etcd or Consul
// ACLs do, small.
//
// # Policy file
//
// The policy is a YAML file, parsed strictly (unknown fields are refused):
//
//	# keystore authorization policy
//	principals:
//	  - name: payments-service           # for logs and errors; unique
//	    token_sha256: "9f86d08...hex"     # SHA-256 of the bearer token, hex (64 chars)
//	    namespaces: [payments, refunds]
//	  - name: orders-service
//	    cert_cn: orders                  # client certificate CommonName under mTLS
//	    namespaces: ["orders"]
//	  - name: ops
//	    token_sha256: "..."
//	    namespaces: ["*"]                 # every namespace
//	    admin: true                       # may call admin RPCs
//
// Each principal has a unique name and exactly one credential: token_sha256
// (HashToken of a bearer token) or cert_cn (the CommonName of a client
// certificate verified by the server's TLS configuration). No two principals
// share a token hash or a cert_cn. namespaces lists exact namespace names
// (1–64 characters of [a-z0-9._-], as the contract defines them) or "*" for
// every namespace; it may be empty only for an admin principal, which may
// then call admin RPCs and nothing else. A policy with no principals is
// refused, so that a file emptied by mistake never locks every caller out.
//
// # Credentials
//
// A call presents `authorization: Bearer <token>` metadata or, under mutual
// TLS, a client certificate. Only SHA-256 hashes of tokens are stored. The
// hash of the presented token is compared with every token principal's in
// constant time (crypto/subtle), with no early exit and no map lookup keyed
// by the secret. When a call carries both, the token decides. Tokens must be
// random (at least 128 bits, e.g. `openssl rand -hex 32`): that is why a plain
// SHA-256, cheap enough to compute on every request, is the right hash and
// bcrypt is not. A client certificate counts only when the TLS handshake
// verified it (tls.VerifyClientCertIfGiven or tls.RequireAndVerifyClientCert
// on the server); a certificate merely presented is ignored. Bearer tokens
// are readable by anyone on the path of a plaintext connection: send them
// over TLS.
//
// # Where the checks happen
//
// The server installs Authorizer.UnaryServerInterceptor and
// Authorizer.StreamServerInterceptor whenever a policy file is configured,
// and only then; there is no "nil Authorizer means auth off". The
// interceptors authenticate every call except Options.Public methods (health
// checks), put the Principal in the call's context and refuse
// Options.Admin methods to non-admins. They do not check namespaces: each
// operation inside a Batch or Stream carries its own namespace, so the
// service calls CheckNamespace once per operation.
//
// IMPORTANT: CheckNamespace and CheckAdmin allow a context that carries no
// Principal, because a context without one means auth is off (no policy
// configured). With a policy configured, every call that passed the
// interceptors carries a Principal, so the checks bite. A method wrongly
// listed in Options.Public runs without a Principal, that is, without
// checks.
//
// # Reloading
//
// Authorizer.Reload re-reads the policy file and Authorizer.Watch polls it
// for changed content; a bad file is logged and the previous policy stays in
// force. A new policy applies to calls that start after it is loaded: a
// stream already open keeps the Principal it was authenticated as until it
// ends. Replace the file atomically (write a temporary file, then rename) so
// that a poll never reads it half-written.
package auth

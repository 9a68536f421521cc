// Command keystorectl claims, completes, releases, heartbeats and reads
// idempotency keys in a keystore cluster, shows each node's view of it,
// and lists and changes its members.
//
//	keystorectl [global flags] <command> [arguments] [flags]
//
// Commands: claim, complete, release, heartbeat, get, status, version,
// endpoint health, and member list | add | promote | remove. Global flags (--endpoints, -o,
// --timeout, --no-discovery, and those of TLS and credentials below) go
// before or after the command, and a command's flags before or after its
// arguments. Output is aligned "key: value" lines or a table, or with
// -o json one JSON object per result (times RFC 3339, bytes base64). --endpoints defaults to
// $KEYSTORECTL_ENDPOINTS, else the three local nodes of make cluster.
//
// Exit status: 0 on success; 1 when keystore said no (a refusal such as
// CLAIM_LOST, NOT_FOUND, PERMISSION_DENIED, or a node not serving); 2 on a
// usage error; 3 when the cluster could not be reached (no node answered,
// a TLS handshake failed, or no quorum answered in time), so scripts can
// tell "retry later" from "this will not work".
//
// claim, complete, release, heartbeat and get use the Go client, which
// also learns the members' published client addresses in the background
// (turn it off with --no-discovery): a call that outlives the first
// answer, a claim's --wait or its retries, may go to a member not in
// --endpoints. status and the member commands call exactly --endpoints.
//
// TLS and credentials. --cacert FILE verifies the servers against that CA
// (and turns TLS on), --tls alone against the system's roots; the name
// verified is each endpoint's host unless --server-name. --cert and
// --cert-key present a client certificate, for a server that identifies
// callers by it. A bearer token, from the first line of --token-file or
// else from the environment variable KEYSTORECTL_TOKEN, is sent as
// "authorization: Bearer <token>" with every call, the membership calls
// included; keystorectl refuses to send it without TLS unless
// --insecure-token (local testing only). A call the server refuses for
// want of a credential fails with "unauthenticated: ...", one for a
// namespace not granted with "permission denied: ..." (exit 1).
//
//	keystorectl --cacert ca.crt --token-file ~/.keystore/token --endpoints ks1:7001 get --namespace payments --key order-42
//	keystorectl --cacert ca.crt --cert me.crt --cert-key me.key member list
//
// A session:
//
//	keystorectl claim --namespace payments --key order-42 --fingerprint v1
//	keystorectl complete --namespace payments --key order-42 --token 12 --code 201 --body '{"charge":"ch_1"}'
//	keystorectl claim --namespace payments --key order-42 --fingerprint v1   # outcome: COMPLETED, the stored response
//	keystorectl status
//
// Membership changes go through Raft one at a time; any node takes them
// (a follower forwards to the leader) and the endpoints are tried in order:
//
//	keystorectl member list                       # ID, NAME, ROLE (leader, voter, learner), PEER ADDR, CLIENT ADDR, MATCH
//	keystorectl member add n4 --peer-addr 10.0.0.4:7101 --client-addr 10.0.0.4:7001
//	keystorectl member promote n4                 # or its hex id
//	keystorectl member remove 8e9a1f3c2b7d4e01    # or its name
//
// member add adds a learner and prints the keystored command line that
// starts it (--join through the endpoint that took the change, an empty
// --data-dir); the leader promotes it to a voter by itself once it has
// caught up. member promote is refused (FAILED_PRECONDITION, exit 1 with
// the leader's reason after "refused:") while the learner is behind;
// member remove is refused when the voters left could not form a quorum,
// and removing the leader hands leadership over first. promote and remove
// take a member's hex id or its name, looked up with member list.
package main

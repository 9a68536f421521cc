// Command keystorectl claims, completes, releases, heartbeats and reads
// idempotency keys in a keystore cluster, and shows each node's view of it.
//
//	keystorectl [global flags] <command> [flags]
//
// Commands: claim, complete, release, heartbeat, get, status. Global flags
// (--endpoints, -o, --timeout) go before or after the command. Output is
// aligned "key: value" lines, or with -o json one JSON object per result
// (times RFC 3339, bytes base64). Exit status: 0 on success, 1 when keystore
// (or the network) refused the call, 2 on a usage error.
//
// A session:
//
//	keystorectl claim --namespace payments --key order-42 --fingerprint v1
//	keystorectl complete --namespace payments --key order-42 --token 12 --code 201 --body '{"charge":"ch_1"}'
//	keystorectl claim --namespace payments --key order-42 --fingerprint v1   # outcome: COMPLETED, the stored response
//	keystorectl status
package main

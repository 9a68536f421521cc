// Command gencerts writes the certificates of a local keystore cluster: a
// CA, one certificate per node (used both to serve and to dial peers), one
// per client, and a "stranger" node certificate signed by an unrelated CA,
// for showing that a certificate of another CA is refused.
//
// Usage:
//
//	go run ./internal/certgen/cmd/gencerts -out DIR -nodes n1,n2,n3 \
//		-clients admin,payments,orders [-hosts localhost,127.0.0.1] [-force]
//
// It writes, keys with mode 0600 and certificates of the CAs with mode 0644:
//
//	DIR/ca.crt                      the cluster CA
//	DIR/<node>.crt, DIR/<node>.key  CN and DNS SAN <node>, plus -hosts as DNS
//	                                or IP SANs; server and client usage
//	DIR/client-<name>.crt, .key     CN <name>; client usage only
//	DIR/stranger-ca.crt             an unrelated CA
//	DIR/stranger.crt, .key          signed by the unrelated CA, named like
//	                                the first node
//
// The CA's key is never written, so adding a node later means running the
// command again for the whole cluster. It refuses to overwrite an existing
// DIR/ca.crt unless -force is given.
package main

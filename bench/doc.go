// Command keystore-bench drives the same idempotent-request workload against
// keystore and against the stores people would otherwise use as a dedup
// table (etcd, Redis, PostgreSQL), plus a raw fsync loop that shows the
// disk's limit, and turns the results into a markdown report and SVG charts.
//
// One lifecycle is what a protected request costs the store: Claim a fresh
// key with a fingerprint, then Complete it with a response. A fraction of the
// operations instead retry a key completed earlier in the run and must get
// its response back byte for byte; any other answer is a miss, and a run
// with a miss exits non-zero.
//
//	keystore-bench -backend keystore -endpoints 127.0.0.1:17001,... -concurrency 16 -duration 10s -out raw.jsonl
//	keystore-bench ping -backend etcd -endpoints 127.0.0.1:12379 -timeout 30s
//	keystore-bench report -in raw.jsonl -out results/
//
// With -tls-ca, -tls-cert and -tls-key the keystore and etcd clients connect
// over TLS with a client certificate, and with -token-file the keystore
// client sends a bearer token with every call (run.sh's MTLS=1).
//
// See README.md beside this file for the workload of each backend, the
// durability settings and how to read the results.
package main

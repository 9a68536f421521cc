// Command payments demonstrates keystore's effectively-once story end to
// end, in one process:
//
//	go run ./examples/payments
//
// It starts a three-node keystore cluster (or uses --endpoints), a payment
// service whose POST /charge "charges a card" once per call, protected by
// the httpidem middleware, and a flaky proxy in front of it that drops
// requests, cuts connections while the charge runs and loses responses after
// the card was charged. A client sends --payments distinct payments through
// the proxy, each with its own Idempotency-Key, and retries each one until it
// gets an answer. Retries are what an unreliable network forces on a client;
// keystore is what keeps them from charging twice.
//
// At the end it prints the figures and "double charges: 0" when the service
// charged exactly once per payment (exit 0), or how many extra charges it
// made (exit 1). --unprotected runs the same traffic without keystore, to
// show the double charges the retries cause.
//
// The proxy's faults are decided by --seed from each request's key and how
// many times that key arrived before, so the same seed makes the same faults
// whatever the concurrency (with the embedded cluster; against --endpoints
// each run uses fresh keys, and so other faults).
//
// One job per file: cluster.go (the embedded cluster), service.go (the
// payment service and its ledger), proxy.go (the flaky proxy), payer.go (the
// retrying client), demo.go (wiring and the report), main.go (flags).
package main

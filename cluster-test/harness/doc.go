// Package harness runs keystore as real processes for the fault tests: it
// builds cmd/keystored, starts a three-node cluster on loopback with a
// fault proxy (cluster-test/faultproxy) on every directed peer link (and,
// unless Config.NoGossip, gossip between the nodes, not proxied), and
// injects faults — SIGKILL and restart, SIGSTOP/SIGCONT, full, partial and
// one-way partitions, slow links, and membership changes that replace a
// node by removing it, wiping its data and joining it again under a new
// Raft id (membership.go) — while a workload records a history
// (cluster-test/history) for the checkers. Every third client sends its
// writes through BatchService.Batch, each beside a filler operation, and
// every third through a long-lived BatchService.Stream per node, so that
// the checkers judge the batch and stream paths too.
package harness

// Package harness runs keystore as real processes for the fault tests: it
// builds cmd/keystored, starts a three-node cluster on loopback with a
// fault proxy (cluster-test/faultproxy) on every directed peer link, and
// injects faults — SIGKILL and restart, SIGSTOP/SIGCONT, full, partial and
// one-way partitions, slow links — while a workload records a history
// (cluster-test/history) for the checkers. Every third client sends its
// writes through BatchService, each beside a filler operation, so that the
// checkers judge the batch path too.
package harness

// Package clustertest runs keystore as real processes and proves the
// promises of docs/contract.md under faults.
//
//   - process_test.go: kill -9 of one node, of the leader, of all three.
//   - fault_test.go (TestFaults, make cluster-test): seeded runs of three
//     keystored processes, every peer link through a fault proxy
//     (faultproxy), a recorded workload of pinned and roaming clients over
//     hot and cold keys with paused holders and, in half the runs, 2 s
//     leases and 5 s retention so that takeovers and expiry happen inside
//     fault windows (harness.Workload), and two overlapping streams of
//     faults: kill, kill-leader, kill-all, pause, isolate, one-way, slow,
//     reset, clock skew (harness.RunNemesis). After healing, every node's
//     state checksum must agree, and the history must pass the checker
//     (package checker: porcupine per key plus direct invariants). A failing
//     run saves history, visualization and node logs under results/seed-N.
//   - docker_test.go (TestDockerCluster): the FROM scratch image as three
//     containers; docker kill, network disconnect and pause of the leader.
//
// Checker efficacy: internal/bugs holds deliberate bugs compiled in only by
// a build tag; make cluster-test-bugs shows each is caught.
package clustertest

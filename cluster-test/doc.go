// Package clustertest runs keystore as real processes and proves the
// promises of docs/contract.md under faults.
//
//   - process_test.go: kill -9 of one node, of the leader, of all three.
//   - gossip_process_test.go: gossip between real processes.
//     TestProcessBootstrapExpect: three nodes with empty data dirs and
//     --bootstrap-expect 3 form exactly one cluster, 20 rounds (3 under
//     -short). TestProcessJoinByGossip: a node not named by
//     --initial-cluster joins by one member's gossip address and becomes a
//     voter; a node of another cluster pointed at the cluster's gossip is
//     refused; gossip shows a SIGKILLed follower dead within 15 s, and it
//     stays a voter.
//   - membership_process_test.go: grow 1 → 3 → 5 by gossip while a client
//     writes; remove the leader (it stops at the answer); SIGTERM of the
//     leader hands over well under an election; a node cut off from gossip
//     alone (its gossip key swapped by SIGHUP) stays a voter.
//   - upgrade_test.go (TestRollingUpgrade, make cluster-test): three nodes
//     of the release before cluster versions (built from a pinned commit in
//     a git worktree) upgraded one by one while a client writes; the cluster
//     version rises once all run the new binary; nothing acknowledged lost.
//   - prometheus_test.go: Debian's prometheus scrapes a three-node cluster
//     started as make cluster does, with deploy/'s configuration and rules.
//   - security_process_test.go: TLS, mutual TLS and a policy end to end.
//   - fault_test.go (TestFaults, make cluster-test): seeded runs of three
//     keystored processes, every peer link through a fault proxy
//     (faultproxy), a recorded workload of pinned and roaming clients over
//     hot and cold keys with paused holders and, in half the runs, 2 s
//     leases and 5 s retention so that takeovers and expiry happen inside
//     fault windows (harness.Workload), and two overlapping streams of
//     faults: kill, kill-leader, kill-all, pause, isolate, one-way, slow,
//     reset, clock skew, and membership changes: replace (kill a node,
//     remove it, wipe its data, rejoin it with --join under a new id) and
//     remove-rejoin (remove a live node, which exits, then wipe and rejoin
//     it), one at a time and never while another node is down
//     (harness.RunNemesis; -faults.kinds draws from a subset). After
//     healing, every node's state checksum must agree, every node must list
//     the three nodes as voters, and the history must pass the checker
//     (package checker: porcupine per key plus direct invariants). Every
//     node gossips (its own loopback port, the others' as --join; not
//     through the proxies, and a --peer-route by name wins over the
//     addresses gossip spreads, so Raft stays on the proxies), and a wiped
//     node rejoins with --join of the others' gossip addresses and
//     --initial-cluster-state existing (-faults.gossip=false: without
//     gossip, --join of their client addresses). The
//     summary gives each fault kind's recovery times, and for membership
//     changes the time from --join to voter. A failing run saves history,
//     visualization, fault schedule and node logs under results/seed-N
//     (every run with -faults.save-logs).
//   - docker_test.go (TestDockerCluster): the FROM scratch image as three
//     containers bootstrapped by gossip (--bootstrap-expect 3, as
//     docker-compose.yml); docker kill, network disconnect and pause of the
//     leader; a fourth container joining by gossip.
//
// Checker efficacy: internal/bugs holds deliberate bugs compiled in only by
// a build tag; make cluster-test-bugs shows each is caught.
package clustertest

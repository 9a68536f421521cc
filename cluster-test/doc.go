// Package clustertest runs keystore as real processes: it builds
// cmd/keystored, starts a three-node cluster on loopback and injects faults
// the way an operator's bad day would (kill -9 of one node, of the leader,
// of all three). The tests here are the end-to-end proof that the promises
// of CONTRACT.md hold across process crashes.
package clustertest

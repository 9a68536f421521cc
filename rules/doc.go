// Package rules is the contract's state machine as pure functions: what a
// Claim, Complete, Release or Heartbeat does to a record at a given log
// time (Transition), the read-only answer to a Claim that would change
// nothing (DecideClaim), and the contract's refusals as errors.
//
// It knows nothing of Raft, Pebble or gRPC. storage applies Transition to
// the records of committed entries; api uses DecideClaim to answer a retry
// without a log write. Both must agree with the log, so both call the same
// function. See docs/contract.md for the rules themselves.
//
// NB: everything here is deterministic: no clock, no randomness, no map
// iteration. Every replica runs it on the same log and must reach
// byte-identical state.
package rules

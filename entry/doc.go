// Package entry is the format of keystore's Raft log entries: the one
// contract between the Raft driver (raftnode), which writes entries, and
// the state machine (storage), which applies them.
//
// An entry's data is a statev1.Entry envelope: the leader's log time, and
// either one command with its request id, or several packed proposals (each
// a request id and a command), or nothing (a tick that only moves log
// time). Commands themselves are statev1.Command messages, opaque here
// except for the record they name (PackKey).
//
// Packing: concurrent proposals on different records share one entry, one
// Raft proposal and one log write. Packer holds the rules (each proposal
// names a record, no record twice, at most one token-granting Claim, since
// a token is the index of the entry that granted it); the leader packs by
// them, and the state machine refuses a packed proposal that breaks them.
//
// Results: the state machine returns one statev1.Result per entry; for a
// packed entry its packed field holds one result per proposal, in order,
// each carrying its request id. Answers routes them to their proposers.
//
// Cluster versions (clusterversion.go): what the log may hold is gated by
// the cluster version, the log format every member supports, raised by the
// leader through the log (SetClusterVersion); an entry says which version
// it needs (Needs), and a replica whose binary supports less stops rather
// than apply it.
//
// NB: the envelope's encoding is persisted in every replica's log: a change
// to it must keep old entries decodable and apply them as before, and is
// written only once the cluster version allows it (raise ClusterVersion).
package entry

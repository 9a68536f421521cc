// Package storage is a keystore node's durable state: the Raft log, in
// segment files of its own (wal.go), and the replicated state machine of
// idempotency records, in a Pebble database.
//
// Store implements raft.Storage for the Raft driver and adds the writes the
// driver makes (Append, Compact, ApplySnapshot), the two ends of a
// snapshot's stream (OpenSnapshot, ReceiveSnapshot: snapshots of any size
// travel beside raft and are installed by one atomic ingest, see
// snapstream.go), and Apply, which decodes committed entries (package
// entry's format, packed ones included) and runs the contract's rules
// (package rules, pure functions) over the records they name, writing the
// results, the expiry index and the applied index in one batch. An
// in-memory Bloom filter of the record
// keys (keyfilter.go) spares apply the Pebble lookup of a key that has no
// record, which is what nearly every Claim names. See DESIGN.md for the
// log's files, the key layout, the batches, the filter and what is synced
// when.
package storage

// Package storage is a keystore node's durable state: the Raft log, in
// segment files of its own (wal.go), and the replicated state machine of
// idempotency records, in a Pebble database.
//
// Store implements raft.Storage for the Raft driver and adds the writes the
// driver makes (Append, Compact, ApplySnapshot), the two ends of a
// snapshot's stream (OpenSnapshot, ReceiveSnapshot: snapshots of any size
// travel beside raft and are installed by one atomic ingest, see
// snapstream.go), Apply, which runs the
// contract's rules over committed entries, and PackKey, which tells the
// driver the record a command names, so that commands on different records
// can share an entry. The rules themselves are the pure
// function transition in apply.go. An in-memory Bloom filter of the record
// keys (keyfilter.go) spares apply the Pebble lookup of a key that has no
// record, which is what nearly every Claim names. See DESIGN.md for the
// log's files, the key layout, the batches, the filter and what is synced
// when.
package storage

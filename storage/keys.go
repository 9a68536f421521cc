package storage

import (
	"encoding/binary"
	"errors"
	"math"
)

// Key layout of the Pebble database. The state machine is one contiguous
// range ([stateStart, stateEnd)) that a snapshot copies and a restore
// replaces. The 0x01 keys are the Raft log of stores written before it
// moved to its own files (wal.go); Open moves them there and deletes them.
//
//	0x01 0x01 <index u64 BE>          Raft log entry (raftpb.Entry)
//	0x01 0x02                         Raft HardState
//	0x01 0x03                         log base: index and term of the last compacted entry
//	0x02 0x01                         state machine meta (statev1.Meta)
//	0x03 <len(ns) u8> <ns> <key>      record (statev1.Record)
//	0x04 <expires_at u64 BE> <len(ns) u8> <ns> <key>
//	                                  expiry index entry (empty value)
//
// NB: the record key length-prefixes the namespace, so no namespace's keys
// can sort into another's range whatever bytes the key holds.
const (
	prefixRaft   byte = 0x01
	prefixMeta   byte = 0x02
	prefixRecord byte = 0x03
	prefixExpiry byte = 0x04

	raftEntry     byte = 0x01
	raftHardState byte = 0x02
	raftLogBase   byte = 0x03
)

var (
	hardStateKey = []byte{prefixRaft, raftHardState}
	logBaseKey   = []byte{prefixRaft, raftLogBase}
	metaKey      = []byte{prefixMeta, 0x01}

	// stateStart and stateEnd bound the state machine's keys.
	stateStart = []byte{prefixMeta}
	stateEnd   = []byte{0x10}

	// expiryStart and expiryEnd bound the expiry index.
	expiryStart = []byte{prefixExpiry}
	expiryEnd   = []byte{prefixExpiry + 1}

	// entryStart and entryEnd bound the Raft log entries.
	entryStart = []byte{prefixRaft, raftEntry}
	entryEnd   = []byte{prefixRaft, raftEntry + 1}
)

// maxNamespaceLen is the longest namespace the key encoding admits.
const maxNamespaceLen = 255

var errBadKey = errors.New("storage: malformed key")

// entryKey returns the key of the Raft log entry at index.
func entryKey(index uint64) []byte {
	k := make([]byte, 2, 10)
	k[0], k[1] = prefixRaft, raftEntry
	return binary.BigEndian.AppendUint64(k, index)
}

// recordKey returns the key of the record (namespace, key). The namespace
// must be at most maxNamespaceLen bytes.
func recordKey(namespace, key string) []byte {
	k := make([]byte, 0, 2+len(namespace)+len(key))
	k = append(k, prefixRecord, byte(len(namespace)))
	k = append(k, namespace...)
	return append(k, key...)
}

// splitRecordKey decodes a record key into namespace and key.
func splitRecordKey(k []byte) (namespace, key string, err error) {
	if len(k) < 2 || k[0] != prefixRecord {
		return "", "", errBadKey
	}
	n := int(k[1])
	if len(k) < 2+n {
		return "", "", errBadKey
	}
	return string(k[2 : 2+n]), string(k[2+n:]), nil
}

// expiryKey returns the expiry index key of the record (namespace, key)
// that expires at expiresAt (Unix nanoseconds of log time). Index keys sort
// by expiry time, so what expired up to T is a prefix of the index.
func expiryKey(expiresAt int64, namespace, key string) []byte {
	k := make([]byte, 0, 11+len(namespace)+len(key))
	k = append(k, prefixExpiry)
	k = binary.BigEndian.AppendUint64(k, uint64(max(expiresAt, 0)))
	k = append(k, byte(len(namespace)))
	k = append(k, namespace...)
	return append(k, key...)
}

// expiryBound returns the smallest index key of records expiring after t:
// the exclusive upper bound of everything that expired at or before t.
func expiryBound(t int64) []byte {
	k := []byte{prefixExpiry}
	if t < 0 {
		return k
	}
	if t == math.MaxInt64 {
		return expiryEnd
	}
	return binary.BigEndian.AppendUint64(k, uint64(t)+1)
}

// splitExpiryKey decodes an expiry index key.
func splitExpiryKey(k []byte) (expiresAt int64, namespace, key string, err error) {
	if len(k) < 10 || k[0] != prefixExpiry {
		return 0, "", "", errBadKey
	}
	t := binary.BigEndian.Uint64(k[1:9])
	if t > math.MaxInt64 {
		return 0, "", "", errBadKey
	}
	n := int(k[9])
	if len(k) < 10+n {
		return 0, "", "", errBadKey
	}
	return int64(t), string(k[10 : 10+n]), string(k[10+n:]), nil
}

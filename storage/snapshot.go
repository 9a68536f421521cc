package storage

import "hash/crc32"

// castagnoli is the CRC-32C table of the log's records and snapshot
// streams (see snapstream.go for snapshots).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

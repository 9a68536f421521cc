// Package backup is the format of keystore's backup files: what
// `keystorectl snapshot save` writes, `keystorectl snapshot status` checks
// and `keystored restore` installs (docs/backup.md is the runbook).
//
// A backup is the replicated state machine at one applied index, as a node
// streams it (ClusterService.Backup), framed so that a copy can be checked
// on its own, long after the cluster that wrote it is gone:
//
//	offset  size  field
//	0       8     magic "KSBACKUP"
//	8       4     format version, u32 big-endian (FormatVersion)
//	12      4     header length n, u32 big-endian (at most MaxHeaderBytes)
//	16      n     header: JSON (Header): the keystore version that wrote it,
//	              the cluster id, index and term, the ConfState and the
//	              members at that index, log time, records, creation time,
//	              and the payload's format
//	16+n    ...   payload: the state (storage's snapshot stream, "KSS2",
//	              which carries its own pair count and CRC-32C)
//	end-48  8     trailer magic "KSBKTAIL"
//	end-40  8     payload length, u64 big-endian
//	end-32  32    SHA-256 of every byte before it
//
// The trailer is last so that a writer can stream a backup of any size
// without knowing its length first, and a reader knows the file is whole
// only when it reaches it: a truncated file, a flipped bit or a file
// followed by anything fails the checksum or the length. NewReader checks
// the magic, the version and the header at once and the checksum at the
// end of the payload: Read returns io.EOF only once the whole file is
// proven intact. A format version newer than this package knows is refused
// (ErrNewerFormat), never guessed at.
//
// The package depends on nothing of the server: keystorectl reads and
// writes backups without Pebble, gRPC or Raft.
package backup

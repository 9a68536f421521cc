package entry

import (
	"fmt"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// Cluster versions gate changes of what is written to the log, as etcd's
// cluster version does: the cluster version is the log format every member
// supports, decided by the leader and recorded through the log
// (SetClusterVersion), so every replica switches at the same index. A
// leader writes an entry that needs version N only once the cluster
// version it applied is N (or the entry is the one raising it to N);
// a replica stops rather than apply an entry that needs more than its
// binary supports (Needs), and a data dir whose recorded cluster version
// is above the binary's is refused at open (downgrade protection).
//
// Versions:
//
//	1: the entry format before cluster versions (implicit: a state or entry
//	   with no version recorded is at 1).
//	2: the SetClusterVersion entry itself (Entry.version and
//	   Entry.set_cluster_version); nothing else changed.
//
// NB: raise ClusterVersion with any change an older binary would misapply
// (a new command, a new envelope field, a new meaning), and write the new
// form only when the cluster version allows it.

// ClusterVersion is the highest cluster version this binary applies.
const ClusterVersion uint32 = 2

// MinClusterVersion is the cluster version of a state or entry that
// records none.
const MinClusterVersion uint32 = 1

// EffectiveVersion maps a recorded version to the one it means: 0 (none
// recorded) is MinClusterVersion.
func EffectiveVersion(v uint32) uint32 {
	return max(v, MinClusterVersion)
}

// SetClusterVersion returns an entry that raises the cluster version to v
// (never lowers it), stamped with the leader's log time like a tick. It
// needs version v to be applied.
func SetClusterVersion(time int64, v uint32) []byte {
	b, _ := proto.Marshal(&statev1.Entry{Time: time, Version: v, SetClusterVersion: v}) // cannot fail
	return b
}

// Needs returns the cluster version env needs to be applied: its version,
// and at least the one it sets.
func Needs(env *statev1.Entry) uint32 {
	return EffectiveVersion(max(env.GetVersion(), env.GetSetClusterVersion()))
}

// UnsupportedError is the error of an entry, snapshot or data dir that
// needs a cluster version above what this binary supports.
type UnsupportedError struct {
	What string // "entry 1234", "snapshot at 1234", "the data dir"
	Need uint32 // the cluster version it needs
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("%s needs cluster version %d; this keystored supports cluster versions up to %d: it was written by a newer keystore. Run a keystored that supports cluster version %d (a downgrade after the cluster version rose is refused: docs/upgrade.md)",
		e.What, e.Need, ClusterVersion, e.Need)
}

// CheckSupported returns an *UnsupportedError if need is above
// ClusterVersion.
func CheckSupported(what string, need uint32) error {
	if need > ClusterVersion {
		return &UnsupportedError{What: what, Need: need}
	}
	return nil
}

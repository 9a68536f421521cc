// Package commandtest builds the state machine's commands for tests of the
// packages that apply, pack or judge them (rules, entry, storage).
package commandtest

import (
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
)

// Times in tests: log time in Unix nanoseconds.
const (
	// T0 is a log time to start from.
	T0 = int64(1_700_000_000) * int64(time.Second)
	// Lease and Retention are the durations ClaimFor uses.
	Lease     = int64(30 * time.Second)
	Retention = int64(24 * time.Hour)
)

// Claim returns a Claim of ns/k.
func Claim(fp, owner string, lease, retention int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
		Namespace: "ns", Key: "k", Fingerprint: []byte(fp), Owner: owner, Lease: lease, Retention: retention,
	}}}
}

// ClaimFor returns a Claim of namespace/key by "owner", for Lease and
// Retention.
func ClaimFor(namespace, key, fp string) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
		Namespace: namespace, Key: key, Fingerprint: []byte(fp), Owner: "owner", Lease: Lease, Retention: Retention,
	}}}
}

// Complete returns a Complete of ns/k.
func Complete(token uint64, resp *statev1.Response, retention int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
		Namespace: "ns", Key: "k", Token: token, Response: resp, Retention: retention,
	}}}
}

// Release returns a Release of ns/k.
func Release(token uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{
		Namespace: "ns", Key: "k", Token: token,
	}}}
}

// Heartbeat returns a Heartbeat of ns/k.
func Heartbeat(token uint64, lease int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{
		Namespace: "ns", Key: "k", Token: token, Lease: lease,
	}}}
}

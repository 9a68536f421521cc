package storage

import (
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
)

// Times in the tests: log time in Unix nanoseconds.
const (
	t0 = int64(1_700_000_000) * int64(time.Second)

	testLease     = int64(30 * time.Second)
	testRetention = int64(24 * time.Hour)
)

func claimCmd(fp, owner string, lease, retention int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
		Namespace: "ns", Key: "k", Fingerprint: []byte(fp), Owner: owner, Lease: lease, Retention: retention,
	}}}
}

func completeCmd(token uint64, resp *statev1.Response, retention int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{
		Namespace: "ns", Key: "k", Token: token, Response: resp, Retention: retention,
	}}}
}

func releaseCmd(token uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{
		Namespace: "ns", Key: "k", Token: token,
	}}}
}

func heartbeatCmd(token uint64, lease int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{
		Namespace: "ns", Key: "k", Token: token, Lease: lease,
	}}}
}

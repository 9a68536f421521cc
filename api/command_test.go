package api_test

import (
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/api"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestCheckCommand: what a leader accepts from a Forward. Commands the API
// builds pass; anything no client request could produce is refused with
// INVALID_ARGUMENT.
func TestCheckCommand(t *testing.T) {
	claim := func(f func(c *statev1.Claim)) *statev1.Command {
		c := &statev1.Claim{Namespace: "payments", Key: "order-1", Lease: int64(30 * time.Second), Retention: int64(24 * time.Hour)}
		f(c)
		return &statev1.Command{Op: &statev1.Command_Claim{Claim: c}}
	}
	for _, tc := range []struct {
		name string
		cmd  *statev1.Command
		ok   bool
	}{
		{"claim", claim(func(*statev1.Claim) {}), true},
		{"claim at the ceilings", claim(func(c *statev1.Claim) { c.Lease, c.Retention = int64(time.Hour), int64(366*24*time.Hour) }), true},
		{"bad namespace", claim(func(c *statev1.Claim) { c.Namespace = "NOT VALID NS!" }), false},
		{"4 KiB key", claim(func(c *statev1.Claim) { c.Key = strings.Repeat("k", 4096) }), false},
		{"150-year lease", claim(func(c *statev1.Claim) { c.Lease = int64(150 * 365 * 24 * time.Hour) }), false},
		{"no lease", claim(func(c *statev1.Claim) { c.Lease = 0 }), false},
		{"negative retention", claim(func(c *statev1.Claim) { c.Retention = -1 }), false},
		{"long fingerprint", claim(func(c *statev1.Claim) { c.Fingerprint = make([]byte, 65) }), false},
		{"long owner", claim(func(c *statev1.Claim) { c.Owner = strings.Repeat("o", 257) }), false},
		{"complete", &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{Namespace: "p", Key: "k", Token: 7, Response: &statev1.Response{Body: []byte("x")}}}}, true},
		{"complete without token", &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{Namespace: "p", Key: "k"}}}, false},
		{"complete too large", &statev1.Command{Op: &statev1.Command_Complete{Complete: &statev1.Complete{Namespace: "p", Key: "k", Token: 7, Response: &statev1.Response{Body: make([]byte, api.MaxEntryBytes+1)}}}}, false},
		{"release", &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Namespace: "p", Key: "k", Token: 7}}}, true},
		{"heartbeat", &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{Namespace: "p", Key: "k", Token: 7, Lease: int64(time.Minute)}}}, true},
		{"heartbeat of 2h", &statev1.Command{Op: &statev1.Command_Heartbeat{Heartbeat: &statev1.Heartbeat{Namespace: "p", Key: "k", Token: 7, Lease: int64(2 * time.Hour)}}}, false},
		{"expire", &statev1.Command{Op: &statev1.Command_Expire{Expire: &statev1.Expire{UpTo: 1 << 62, Limit: 1 << 30}}}, true},
		{"empty", &statev1.Command{}, false},
	} {
		b, err := proto.Marshal(tc.cmd)
		if err != nil {
			t.Fatal(err)
		}
		err = api.CheckCommand(b)
		if tc.ok != (err == nil) || (err != nil && status.Code(err) != codes.InvalidArgument) {
			t.Errorf("%s: got %v; want ok=%v (or INVALID_ARGUMENT)", tc.name, err, tc.ok)
		}
	}
	if err := api.CheckCommand([]byte{0xff, 0xff, 0xff}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("undecodable bytes: got %v; want INVALID_ARGUMENT", err)
	}
}

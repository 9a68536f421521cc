package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/api"
	"github.com/keystore-dev/keystore/entry"
	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/server"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestMetricsCountWhatHappened drives each outcome an operator watches
// through a real cluster and reads it back from the node's collectors:
// per-namespace claim outcomes (a dedup hit is "completed"), lost claims,
// waits, the namespace cap, live records and expiries; RPC latency and
// codes; Raft and storage state.
func TestMetricsCountWhatHappened(t *testing.T) {
	// A quota too: a node with one must start (it once failed validation
	// before the store could count usage) and export it.
	c := testcluster.Start(t, testcluster.Options{Metrics: server.MetricsConfig{MaxNamespaces: 2, NamespaceUsage: true},
		API: api.Config{MaxNamespaceRecords: 1000}})
	lead := c.Leader()
	kv := c.Client(lead)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	claim := func(ns, key, fp string, lease, wait time.Duration) (*keystorev1.ClaimResponse, error) {
		req := &keystorev1.ClaimRequest{Namespace: ns, Key: key, Fingerprint: []byte(fp)}
		if lease > 0 {
			req.Lease = durationpb.New(lease)
		}
		if wait > 0 {
			req.Wait = durationpb.New(wait)
		}
		return kv.Claim(ctx, req)
	}
	must := func(r *keystorev1.ClaimResponse, err error) *keystorev1.ClaimResponse {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	// orders/a: acquired, in progress (once waiting), mismatch, completed
	// replay; it expires a second after completion.
	a := must(claim("orders", "a", "fp", 0, 0))
	must(claim("orders", "a", "fp", 0, 150*time.Millisecond))
	if _, err := claim("orders", "a", "other", 0, 0); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("claim with another fingerprint: %v; want FAILED_PRECONDITION", err)
	}
	if _, err := kv.Complete(ctx, &keystorev1.CompleteRequest{Namespace: "orders", Key: "a", Token: a.GetToken(),
		Response: &keystorev1.Response{Body: []byte("ok")}, Retention: durationpb.New(time.Second)}); err != nil {
		t.Fatal(err)
	}
	must(claim("orders", "a", "fp", 0, 0))
	must(claim("orders", "a", "fp", 0, 0))

	// orders/b: its lease runs out, another attempt takes over, and the
	// first attempt's Complete finds its claim lost; the second releases.
	b := must(claim("orders", "b", "fp", 200*time.Millisecond, 0))
	time.Sleep(300 * time.Millisecond)
	b2 := must(claim("orders", "b", "fp", 0, 0))
	if b2.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED || b2.GetRecord().GetAttempt() != 2 {
		t.Fatalf("second attempt: %v attempt %d; want ACQUIRED attempt 2", b2.GetOutcome(), b2.GetRecord().GetAttempt())
	}
	if _, err := kv.Complete(ctx, &keystorev1.CompleteRequest{Namespace: "orders", Key: "b", Token: b.GetToken(),
		Response: &keystorev1.Response{}}); status.Code(err) != codes.Aborted {
		t.Fatalf("complete with the lost token: %v; want ABORTED", err)
	}
	if _, err := kv.Release(ctx, &keystorev1.ReleaseRequest{Namespace: "orders", Key: "b", Token: b2.GetToken()}); err != nil {
		t.Fatal(err)
	}

	// Two namespaces fit the cap of two; the third is "(other)".
	must(claim("payments", "p", "", 0, 0))
	must(claim("emails", "e", "", 0, 0))
	must(claim("sms", "s", "", 0, 0))

	// Expiry, as applied on every replica: orders/a goes a second after
	// completion (the sweep runs every second), counted under (other)
	// with sms, as orders holds nothing.
	deadline := time.Now().Add(15 * time.Second)
	for _, n := range c.Names {
		for metricValue(t, c.Server(n), "keystore_namespace_expired_total", map[string]string{"namespace": "(other)"}) < 1 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no expiry counted under (other)", n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	s := c.Server(lead)
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"keystore_claims_total", map[string]string{"namespace": "orders", "outcome": "acquired"}, 2},
		{"keystore_claims_total", map[string]string{"namespace": "orders", "outcome": "in_progress"}, 1},
		{"keystore_claims_total", map[string]string{"namespace": "orders", "outcome": "fingerprint_mismatch"}, 1},
		{"keystore_claims_total", map[string]string{"namespace": "orders", "outcome": "completed"}, 2},
		{"keystore_claims_total", map[string]string{"namespace": "orders", "outcome": "takeover"}, 1},
		{"keystore_claims_total", map[string]string{"namespace": "payments", "outcome": "acquired"}, 1},
		{"keystore_claims_total", map[string]string{"namespace": "(other)", "outcome": "acquired"}, 2},
		{"keystore_claims_lost_total", map[string]string{"namespace": "orders", "op": "complete"}, 1},
		{"keystore_completions_total", map[string]string{"namespace": "orders"}, 1},
		{"keystore_releases_total", map[string]string{"namespace": "orders"}, 1},
		{"keystore_claim_wait_seconds", map[string]string{"namespace": "orders"}, 1}, // count
		{"keystore_namespace_records", map[string]string{"namespace": "payments"}, 1},
		// By bytes, payments and emails are the two largest; sms and the
		// emptied orders are summed.
		{"keystore_namespace_records", map[string]string{"namespace": "emails"}, 1},
		{"keystore_namespace_records", map[string]string{"namespace": "(other)"}, 1},
		{"keystore_raft_is_leader", nil, 1},
		{"keystore_raft_has_leader", nil, 1},
		{"keystore_raft_healthy", nil, 1},
		{"keystore_build_info", nil, 1},
		{"keystore_namespace_quota_records", nil, 1000},
		{"keystore_namespace_quota_bytes", nil, 0},
		{"keystore_cluster_version_supported", nil, float64(entry.ClusterVersion)},
	} {
		if got := metricValue(t, s, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v; want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	for _, tt := range []struct {
		name   string
		labels map[string]string
	}{
		{"keystore_raft_proposals_total", nil},
		{"keystore_raft_proposal_bytes_total", nil},
		{"keystore_raft_leader_changes_total", nil},
		{"keystore_raft_term", nil},
		{"keystore_raft_commit_index", nil},
		{"keystore_raft_applied_index", nil},
		{"keystore_wal_fsync_duration_seconds", nil},
		{"keystore_wal_segments", nil},
		{"keystore_wal_bytes", nil},
		{"keystore_pebble_disk_bytes", nil},
		{"keystore_disk_free_bytes", nil},
		{"keystore_disk_total_bytes", nil},
		{"keystore_namespace_bytes", map[string]string{"namespace": "payments"}},
		{"grpc_server_handling_seconds", map[string]string{"grpc_method": "Claim"}},
		{"keystore_operation_duration_seconds", map[string]string{"op": "claim", "code": "OK"}},
		{"keystore_operation_duration_seconds", map[string]string{"op": "claim", "code": "FailedPrecondition"}},
		{"keystore_operation_duration_seconds", map[string]string{"op": "complete", "code": "Aborted"}},
		{"keystore_operation_duration_seconds", map[string]string{"op": "release", "code": "OK"}},
		{"grpc_server_handled_total", map[string]string{"grpc_method": "Claim", "grpc_code": "FailedPrecondition"}},
		{"grpc_server_handled_total", map[string]string{"grpc_method": "Complete", "grpc_code": "Aborted"}},
	} {
		if got := metricValue(t, s, tt.name, tt.labels); got <= 0 {
			t.Errorf("%s%v = %v; want > 0", tt.name, tt.labels, got)
		}
	}
	// The leader reports each follower's lag; followers report none.
	if got := countSeries(t, s, "keystore_raft_follower_lag_entries"); got != len(c.Names)-1 {
		t.Errorf("leader reports %d follower lags; want %d", got, len(c.Names)-1)
	}
	if got := countSeries(t, c.Server(c.Follower()), "keystore_raft_follower_lag_entries"); got != 0 {
		t.Errorf("a follower reports %d follower lags; want 0", got)
	}
}

// metricValue returns the value of the first series of name whose labels
// include labels (a histogram's count); -1 if there is none.
func metricValue(t *testing.T, s *server.Server, name string, labels map[string]string) float64 {
	t.Helper()
	for _, m := range series(t, s, name) {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

func countSeries(t *testing.T, s *server.Server, name string) int {
	t.Helper()
	return len(series(t, s, name))
}

func series(t *testing.T, s *server.Server, name string) []*dto.Metric {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

func hasLabels(m *dto.Metric, labels map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range labels {
		if have[k] != v {
			return false
		}
	}
	return true
}

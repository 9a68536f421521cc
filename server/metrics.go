package server

import (
	"github.com/keystore-dev/keystore/membership"
	"github.com/keystore-dev/keystore/version"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics. The node's own collectors, for the registry keystored serves
// on --metrics-addr: the members as this node sees them, so that an alert
// fires on a member gossip finds dead (which nothing removes by itself).
// They are computed at scrape time from the same view MemberList returns.

var (
	memberGossipDesc = prometheus.NewDesc("keystore_member_gossip_state",
		"1 for the state gossip finds each member in, as this node sees it (alive, dead: missed its probes, left: stopped gracefully, unknown); a dead voter keeps its vote until removed. Absent without gossip.",
		[]string{"member", "id", "state"}, nil)
	memberRoleDesc = prometheus.NewDesc("keystore_member_role",
		"1 for each member's role in the Raft configuration this node applied (leader, voter, learner).",
		[]string{"member", "id", "role"}, nil)
)

// memberCollector collects the member metrics from s.
type memberCollector struct{ s *Server }

// Collectors returns the node's Prometheus collectors.
func (s *Server) Collectors() []prometheus.Collector {
	v := version.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "keystore_build_info",
		Help:        "1, labelled with the version, commit and Go version of the keystored binary.",
		ConstLabels: prometheus.Labels{"version": v.Version, "commit": v.Commit, "go_version": v.GoVersion},
	})
	build.Set(1)
	return []prometheus.Collector{memberCollector{s}, build}
}

func (c memberCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- memberGossipDesc
	ch <- memberRoleDesc
}

func (c memberCollector) Collect(ch chan<- prometheus.Metric) {
	states := []membership.State{membership.StateAlive, membership.StateDead, membership.StateLeft, membership.StateUnknown}
	for _, m := range c.s.memberViews() {
		role := "voter"
		switch {
		case m.GetIsLeader():
			role = "leader"
		case m.GetIsLearner():
			role = "learner"
		}
		for _, r := range []string{"leader", "voter", "learner"} {
			ch <- prometheus.MustNewConstMetric(memberRoleDesc, prometheus.GaugeValue, b2f(r == role), m.GetName(), m.GetId(), r)
		}
		if m.GetGossipState() == "" {
			continue
		}
		for _, st := range states {
			ch <- prometheus.MustNewConstMetric(memberGossipDesc, prometheus.GaugeValue, b2f(m.GetGossipState() == st.String()), m.GetName(), m.GetId(), st.String())
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

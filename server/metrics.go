package server

import (
	"cmp"
	"slices"
	"strings"

	"github.com/keystore-dev/keystore/api"
	"github.com/keystore-dev/keystore/membership"
	"github.com/keystore-dev/keystore/storage"
	"github.com/keystore-dev/keystore/version"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics. The node's own collectors, for the registry keystored serves on
// --metrics-addr (docs/operations.md lists them, deploy/ alerts on them):
//
//   - per namespace (api.Metrics): claims by outcome, claims lost,
//     completions, releases, waits; live records, bytes and expiries from
//     the store's namespace usage (MetricsConfig.NamespaceUsage);
//   - RPCs (go-grpc-middleware's prometheus provider): started, handled by
//     code, latency histograms by method, on the client and peer ports;
//   - Raft (raftnode.Metrics and the member view): term, leader, leader
//     changes, proposals and their bytes, proposals dropped, commit and
//     applied index, each follower's lag, snapshots sent and installed;
//   - storage (storage.Metrics): the log's fsync latency histogram,
//     segments and bytes, Pebble's levels, compactions, write stalls and
//     disk usage, key filter builds;
//   - the members as this node sees them (gossip state, role).
//
// Gauges and counters kept elsewhere are read at scrape time, so nothing
// here sits on the write path but the RPC and per-namespace counters and
// the fsync histogram.

// MetricsConfig sets what the node's metrics cover.
type MetricsConfig struct {
	// MaxNamespaces caps the namespaces labelled by name; later ones are
	// counted under api.OtherNamespaces (default api.DefaultMetricsNamespaces).
	MaxNamespaces int
	// NamespaceUsage exports each namespace's live records, bytes and
	// expiries. It makes the store count usage, which costs a scan of
	// every record at open and after a snapshot install (storage.Config.CountUsage).
	NamespaceUsage bool
}

// nodeMetrics are the collectors a Server feeds as it runs.
type nodeMetrics struct {
	rpc   *grpcprom.ServerMetrics
	api   *api.Metrics
	fsync prometheus.Histogram
}

func newNodeMetrics(cfg MetricsConfig) *nodeMetrics {
	return &nodeMetrics{
		rpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}))),
		api: api.NewMetrics(cfg.MaxNamespaces),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keystore_wal_fsync_duration_seconds",
			Help:    "How long each fsync of the Raft log took (one per batch of appended entries; every write waits for one on a majority).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100 µs to 3.3 s
		}),
	}
}

var (
	memberGossipDesc = prometheus.NewDesc("keystore_member_gossip_state",
		"1 for the state gossip finds each member in, as this node sees it (alive, dead: missed its probes, left: stopped gracefully, unknown); a dead voter keeps its vote until removed. Absent without gossip.",
		[]string{"member", "id", "state"}, nil)
	memberRoleDesc = prometheus.NewDesc("keystore_member_role",
		"1 for each member's role in the Raft configuration this node applied (leader, voter, learner).",
		[]string{"member", "id", "role"}, nil)
	followerLagDesc = prometheus.NewDesc("keystore_raft_follower_lag_entries",
		"On the leader: how many committed entries each other member's log is known to lack (commit index minus its match index). Absent on followers.",
		[]string{"member", "id"}, nil)

	raftTermDesc          = gauge("keystore_raft_term", "The Raft term this node is in.")
	raftLeaderDesc        = gauge("keystore_raft_has_leader", "1 if this node knows a leader, 0 otherwise.")
	raftIsLeaderDesc      = gauge("keystore_raft_is_leader", "1 on the leader.")
	raftCommitDesc        = gauge("keystore_raft_commit_index", "The highest log index this node knows committed.")
	raftAppliedDesc       = gauge("keystore_raft_applied_index", "The highest log index applied to this node's state.")
	raftLeaderChangesDesc = counter("keystore_raft_leader_changes_total", "Leaders this node saw take over since it started.")
	raftProposalsDesc     = counter("keystore_raft_proposals_total", "Entries this node proposed as leader.")
	raftProposalBytesDesc = counter("keystore_raft_proposal_bytes_total", "Bytes of the entries this node proposed as leader.")
	raftDroppedDesc       = counter("keystore_raft_proposals_dropped_total", "Entries raft refused: this node was not leader, was handing leadership over, or its uncommitted tail was full (no quorum keeps up).")
	raftSnapSentDesc      = counter("keystore_raft_snapshots_sent_total", "Snapshots this node sent to followers that installed them.")
	raftSnapFailedDesc    = counter("keystore_raft_snapshots_send_failed_total", "Snapshot transfers to followers that failed.")
	raftSnapAppliedDesc   = counter("keystore_raft_snapshots_installed_total", "Snapshots from a leader this node installed since it started.")
	raftHealthyDesc       = gauge("keystore_raft_healthy", "0 once a storage failure stopped the node.")
	clusterVersionDesc    = gauge("keystore_cluster_version", "The cluster version this node applied: the log format every member supports (docs/upgrade.md).")
	maxClusterVersionDesc = gauge("keystore_cluster_version_supported", "The highest cluster version this node's binary supports; above keystore_cluster_version during a rolling upgrade.")

	walSegmentsDesc    = gauge("keystore_wal_segments", "Segment files of the Raft log.")
	walBytesDesc       = gauge("keystore_wal_bytes", "Bytes the Raft log's segment files occupy (preallocated space included).")
	filterBuildsDesc   = counter("keystore_storage_key_filter_builds_total", "Builds of the record key filter (the first, and each rebuild when it filled or a snapshot replaced the state).")
	writeStallsDesc    = counter("keystore_pebble_write_stalls_total", "Times Pebble made writes wait for compactions.")
	diskBytesDesc      = gauge("keystore_pebble_disk_bytes", "Bytes Pebble's files occupy (the state machine; the Raft log is apart).")
	fsFreeDesc         = gauge("keystore_disk_free_bytes", "Bytes available to keystored on the filesystem holding the data dir.")
	fsTotalDesc        = gauge("keystore_disk_total_bytes", "Size of the filesystem holding the data dir.")
	compactionsDesc    = counter("keystore_pebble_compactions_total", "Compactions Pebble ran.")
	compactDebtDesc    = gauge("keystore_pebble_compaction_debt_bytes", "Bytes Pebble estimates it must compact to reach a stable shape.")
	flushesDesc        = counter("keystore_pebble_flushes_total", "Memtable flushes.")
	memtableBytesDesc  = gauge("keystore_pebble_memtable_bytes", "Bytes allocated to memtables.")
	readAmpDesc        = gauge("keystore_pebble_read_amplification", "Sublevels a read may have to look in (L0 sublevels plus non-empty levels).")
	levelFilesDesc     = prometheus.NewDesc("keystore_pebble_level_files", "Tables in each LSM level.", []string{"level"}, nil)
	levelBytesDesc     = prometheus.NewDesc("keystore_pebble_level_bytes", "Bytes of the tables in each LSM level.", []string{"level"}, nil)
	blockCacheHitsDesc = counter("keystore_pebble_block_cache_hits_total", "Block cache hits.")
	blockCacheMissDesc = counter("keystore_pebble_block_cache_misses_total", "Block cache misses.")

	nsRecordsDesc = prometheus.NewDesc("keystore_namespace_records", "Records a namespace holds (expired ones not yet swept included), as applied on this node. The largest namespaces by bytes, up to --metrics-max-namespaces, are named; the rest are summed under namespace=\"(other)\".", []string{"namespace"}, nil)
	nsBytesDesc   = prometheus.NewDesc("keystore_namespace_bytes", "Bytes of a namespace's records (key and encoded record), as applied on this node.", []string{"namespace"}, nil)
	nsExpiredDesc = prometheus.NewDesc("keystore_namespace_expired_total", "A namespace's records deleted by expiry, as applied on this node since it started.", []string{"namespace"}, nil)
)

func gauge(name, help string) *prometheus.Desc   { return prometheus.NewDesc(name, help, nil, nil) }
func counter(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }

// Collectors returns the node's Prometheus collectors.
func (s *Server) Collectors() []prometheus.Collector {
	v := version.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "keystore_build_info",
		Help:        "1, labelled with the version, commit and Go version of the keystored binary.",
		ConstLabels: prometheus.Labels{"version": v.Version, "commit": v.Commit, "go_version": v.GoVersion},
	})
	build.Set(1)
	quotaRecords := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keystore_namespace_quota_records",
		Help: "The records each namespace may hold (--namespace-max-records); 0: no quota.",
	})
	quotaRecords.Set(float64(max(s.cfg.API.MaxNamespaceRecords, 0)))
	quotaBytes := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keystore_namespace_quota_bytes",
		Help: "The bytes each namespace may hold (--namespace-max-bytes); 0: no quota.",
	})
	quotaBytes.Set(float64(max(s.cfg.API.MaxNamespaceBytes, 0)))
	return []prometheus.Collector{memberCollector{s}, raftCollector{s}, storageCollector{s}, s.metrics.rpc, s.metrics.api, s.metrics.fsync,
		build, quotaRecords, quotaBytes}
}

// memberCollector collects the member metrics from s.
type memberCollector struct{ s *Server }

func (c memberCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- memberGossipDesc
	ch <- memberRoleDesc
	ch <- followerLagDesc
}

func (c memberCollector) Collect(ch chan<- prometheus.Metric) {
	states := []membership.State{membership.StateAlive, membership.StateDead, membership.StateLeft, membership.StateUnknown}
	commit := c.s.node.Status().Commit
	leading := c.s.node.IsLeader()
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
		if leading && !m.GetIsLeader() {
			lag := float64(0)
			if commit > m.GetMatchIndex() {
				lag = float64(commit - m.GetMatchIndex())
			}
			ch <- prometheus.MustNewConstMetric(followerLagDesc, prometheus.GaugeValue, lag, m.GetName(), m.GetId())
		}
		if m.GetGossipState() == "" {
			continue
		}
		for _, st := range states {
			ch <- prometheus.MustNewConstMetric(memberGossipDesc, prometheus.GaugeValue, b2f(m.GetGossipState() == st.String()), m.GetName(), m.GetId(), st.String())
		}
	}
}

// raftCollector collects raftnode's metrics.
type raftCollector struct{ s *Server }

func (c raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{raftTermDesc, raftLeaderDesc, raftIsLeaderDesc, raftCommitDesc, raftAppliedDesc,
		raftLeaderChangesDesc, raftProposalsDesc, raftProposalBytesDesc, raftDroppedDesc, raftSnapSentDesc, raftSnapFailedDesc,
		raftSnapAppliedDesc, raftHealthyDesc, clusterVersionDesc, maxClusterVersionDesc} {
		ch <- d
	}
}

func (c raftCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.s.node.Metrics()
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	n := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	g(raftTermDesc, float64(m.Term))
	g(raftLeaderDesc, b2f(m.Leader != 0))
	g(raftIsLeaderDesc, b2f(m.Leader != 0 && m.Leader == m.ID))
	g(raftCommitDesc, float64(m.Commit))
	g(raftAppliedDesc, float64(m.Applied))
	g(raftHealthyDesc, b2f(m.Healthy))
	g(clusterVersionDesc, float64(m.ClusterVersion))
	g(maxClusterVersionDesc, float64(m.MaxClusterVersion))
	n(raftLeaderChangesDesc, m.LeaderChanges)
	n(raftProposalsDesc, m.Proposals)
	n(raftProposalBytesDesc, m.ProposalBytes)
	n(raftDroppedDesc, m.ProposalsDropped)
	n(raftSnapSentDesc, m.SnapshotsSent)
	n(raftSnapFailedDesc, m.SnapshotsFailed)
	n(raftSnapAppliedDesc, m.SnapshotsApplied)
}

// storageCollector collects the store's metrics and namespace usage.
type storageCollector struct{ s *Server }

func (c storageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{walSegmentsDesc, walBytesDesc, filterBuildsDesc, writeStallsDesc, diskBytesDesc, fsFreeDesc, fsTotalDesc,
		compactionsDesc, compactDebtDesc, flushesDesc, memtableBytesDesc, readAmpDesc, levelFilesDesc, levelBytesDesc,
		blockCacheHitsDesc, blockCacheMissDesc, nsRecordsDesc, nsBytesDesc, nsExpiredDesc} {
		ch <- d
	}
}

func (c storageCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.s.store.Metrics()
	if m.Pebble == nil {
		return // closed
	}
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	n := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	p := m.Pebble
	g(walSegmentsDesc, float64(m.LogSegments))
	g(walBytesDesc, float64(m.LogBytes))
	n(filterBuildsDesc, float64(m.FilterBuilds))
	n(writeStallsDesc, float64(m.WriteStalls))
	g(diskBytesDesc, float64(m.DiskBytes))
	if m.FSTotalBytes > 0 {
		g(fsFreeDesc, float64(m.FSFreeBytes))
		g(fsTotalDesc, float64(m.FSTotalBytes))
	}
	n(compactionsDesc, float64(p.Compact.Count))
	g(compactDebtDesc, float64(p.Compact.EstimatedDebt))
	n(flushesDesc, float64(p.Flush.Count))
	g(memtableBytesDesc, float64(p.MemTable.Size))
	g(readAmpDesc, float64(p.ReadAmp()))
	for i := range p.Levels {
		l := levelName(i)
		g(levelFilesDesc, float64(p.Levels[i].TablesCount), l)
		g(levelBytesDesc, float64(p.Levels[i].TablesSize), l)
	}
	n(blockCacheHitsDesc, float64(p.BlockCache.Hits))
	n(blockCacheMissDesc, float64(p.BlockCache.Misses))
	if !c.s.cfg.Metrics.NamespaceUsage {
		return
	}
	// The largest namespaces (by bytes, then records, then name) up to the
	// cap keep their names; the rest are summed under one label. Unlike
	// the request counters (named in the order this node served them),
	// this choice depends on the state only, so every replica labels
	// alike.
	type nsUsage struct {
		ns string
		u  storage.Usage
	}
	var all []nsUsage
	c.s.store.EachNamespaceUsage(func(ns string, u storage.Usage) { all = append(all, nsUsage{ns, u}) })
	slices.SortFunc(all, func(a, b nsUsage) int {
		return cmp.Or(cmp.Compare(b.u.Bytes, a.u.Bytes), cmp.Compare(b.u.Records, a.u.Records), strings.Compare(a.ns, b.ns))
	})
	var other storage.Usage
	for i, x := range all {
		if i >= c.s.metrics.api.MaxNamespaces() {
			other.Records += x.u.Records
			other.Bytes += x.u.Bytes
			other.Expired += x.u.Expired
			continue
		}
		g(nsRecordsDesc, float64(x.u.Records), x.ns)
		g(nsBytesDesc, float64(x.u.Bytes), x.ns)
		n(nsExpiredDesc, float64(x.u.Expired), x.ns)
	}
	if len(all) > c.s.metrics.api.MaxNamespaces() {
		g(nsRecordsDesc, float64(other.Records), api.OtherNamespaces)
		g(nsBytesDesc, float64(other.Bytes), api.OtherNamespaces)
		n(nsExpiredDesc, float64(other.Expired), api.OtherNamespaces)
	}
}

func levelName(i int) string { return "L" + string(rune('0'+i)) }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

const (
	alertsFile    = "prometheus/alerts.yml"
	dashboardFile = "grafana/keystore.json"
)

// tlsMetric is exported by cmd/keystored (not by server.Server) when a
// port serves TLS; the test reads keystored's source to be sure the name
// is still the one it registers.
const tlsMetric = "keystore_tls_cert_not_after_timestamp_seconds"

// exportedNames starts a real three-node cluster (gossip on, namespace
// usage exported), drives every per-namespace outcome so that each labelled
// series exists, and returns the names of the series the leader's
// registry serves, as keystored's admin listener would: the node's
// collectors, Go's and the process's. A histogram contributes its _bucket,
// _sum and _count series, a summary its own name, _sum and _count; up
// (made by Prometheus) and the TLS gauge are added.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	c := testcluster.Start(t, testcluster.Options{Gossip: true, Metrics: server.MetricsConfig{NamespaceUsage: true}})
	lead := c.Leader()
	kv := c.Client(lead)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	claim := func(key, fp string, lease, wait time.Duration) *keystorev1.ClaimResponse {
		t.Helper()
		req := &keystorev1.ClaimRequest{Namespace: "deploy", Key: key, Fingerprint: []byte(fp)}
		if lease > 0 {
			req.Lease = durationpb.New(lease)
		}
		if wait > 0 {
			req.Wait = durationpb.New(wait)
		}
		resp, err := kv.Claim(ctx, req)
		if err != nil && fp != "other" {
			t.Fatalf("claim %s: %v", key, err)
		}
		return resp
	}
	// acquired, in_progress (waiting), fingerprint_mismatch, completion,
	// completed replay; takeover after a lease ran out, a lost claim, a
	// release.
	a := claim("a", "fp", 0, 0)
	claim("a", "fp", 0, 50*time.Millisecond)
	claim("a", "other", 0, 0)
	if _, err := kv.Complete(ctx, &keystorev1.CompleteRequest{Namespace: "deploy", Key: "a", Token: a.GetToken(), Response: &keystorev1.Response{Body: []byte("ok")}}); err != nil {
		t.Fatal(err)
	}
	claim("a", "fp", 0, 0)
	b := claim("b", "fp", 200*time.Millisecond, 0)
	time.Sleep(300 * time.Millisecond)
	b2 := claim("b", "fp", 0, 0)
	_, _ = kv.Complete(ctx, &keystorev1.CompleteRequest{Namespace: "deploy", Key: "b", Token: b.GetToken(), Response: &keystorev1.Response{}})
	if _, err := kv.Release(ctx, &keystorev1.ReleaseRequest{Namespace: "deploy", Key: "b", Token: b2.GetToken()}); err != nil {
		t.Fatal(err)
	}
	// Gossip reports the members once it has probed them.
	deadline := time.Now().Add(15 * time.Second)
	for {
		names := gather(t, c.Server(lead))
		if names["keystore_member_gossip_state"] || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	names := gather(t, c.Server(lead))
	names["up"] = true
	src, err := os.ReadFile(filepath.Join("..", "cmd", "keystored", "metrics.go"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(src, []byte(`"`+tlsMetric+`"`)) {
		names[tlsMetric] = true
	}
	return names
}

func gather(t *testing.T, s *server.Server) map[string]bool {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(s.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		n := mf.GetName()
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n], names[n+"_sum"], names[n+"_count"] = true, true, true
		default:
			names[n] = true
		}
	}
	return names
}

// TestDeployFilesUseExportedMetrics checks alerts.yml and the dashboard
// against the metrics a real node exports, and that the checks catch a
// misspelt name.
func TestDeployFilesUseExportedMetrics(t *testing.T) {
	names := exportedNames(t)
	// The series the rules and panels rely on must be among them, or the
	// registry was not gathered as keystored serves it.
	for _, n := range []string{"keystore_claims_total", "keystore_claims_lost_total", "keystore_releases_total",
		"keystore_claim_wait_seconds_bucket", "keystore_namespace_records", "keystore_raft_follower_lag_entries",
		"keystore_member_gossip_state", "grpc_server_handling_seconds_bucket", "go_goroutines", "process_open_fds",
		"keystore_namespace_quota_records", "keystore_namespace_quota_bytes"} {
		if !names[n] {
			t.Errorf("the node does not export %s", n)
		}
	}
	alerts, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	dash, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("alerts", func(t *testing.T) {
		for _, p := range checkRules(alerts, names) {
			t.Errorf("%s: %s", alertsFile, p)
		}
	})
	t.Run("dashboard", func(t *testing.T) {
		for _, p := range checkDashboard(dash, names) {
			t.Errorf("%s: %s", dashboardFile, p)
		}
	})
	// A misspelt metric, label matcher or missing field must be reported.
	t.Run("catches mistakes", func(t *testing.T) {
		for _, tt := range []struct {
			file, old, new, want string
			check                func([]byte, map[string]bool) []string
		}{
			{alertsFile, "keystore_wal_fsync_duration_seconds_bucket", "keystore_wal_fsync_duration_second_bucket",
				"unknown metric keystore_wal_fsync_duration_second_bucket", checkRules},
			{alertsFile, "keystore_raft_follower_lag_entries{job=\"keystore\"}", "keystore_raft_follower_lag_entries",
				"keystore_raft_follower_lag_entries without job=\"keystore\"", checkRules},
			{alertsFile, "        for: 5m\n", "", "no for", checkRules},
			{alertsFile, "severity: critical", "severity: page", "severity \"page\"", checkRules},
			{dashboardFile, "keystore_pebble_read_amplification", "keystore_pebble_read_amp",
				"unknown metric keystore_pebble_read_amp", checkDashboard},
			{dashboardFile, "keystore_wal_fsync_duration_seconds_count", "keystore_wal_fsync_duration_seconds",
				"unknown metric keystore_wal_fsync_duration_seconds", checkDashboard},
			{dashboardFile, "label_values(keystore_claims_total{", "label_values(keystore_claim_total{",
				"unknown metric keystore_claim_total", checkDashboard},
		} {
			data := map[string][]byte{alertsFile: alerts, dashboardFile: dash}[tt.file]
			if !bytes.Contains(data, []byte(tt.old)) {
				t.Fatalf("%s has no %q to break", tt.file, tt.old)
			}
			broken := bytes.ReplaceAll(data, []byte(tt.old), []byte(tt.new))
			problems := tt.check(broken, names)
			if !strings.Contains(strings.Join(problems, "\n"), tt.want) {
				t.Errorf("%s with %q for %q: problems %q; want one with %q", tt.file, tt.new, tt.old, problems, tt.want)
			}
		}
	})
}

// checkExpr returns the problems of one PromQL expression: metrics not
// exported, selectors without the job matcher, no metric at all.
func checkExpr(expr string, names map[string]bool, jobMatcher *regexp.Regexp, jobText string) (problems []string, known int) {
	sels, err := selectors(expr)
	if err != nil {
		return []string{err.Error()}, 0
	}
	for _, s := range sels {
		switch {
		case s.name == "":
			problems = append(problems, fmt.Sprintf("a selector without a metric name: {%s}", s.matchers))
			continue
		case !names[s.name]:
			problems = append(problems, fmt.Sprintf("unknown metric %s (not exported by keystored%s)", s.name, nearest(s.name, names)))
		default:
			known++
		}
		if !jobMatcher.MatchString(s.matchers) {
			problems = append(problems, fmt.Sprintf("%s without %s", s.name, jobText))
		}
	}
	if len(sels) == 0 {
		problems = append(problems, "no metric in "+expr)
	}
	return problems, known
}

var (
	ruleJob      = regexp.MustCompile(`(^|[{,\s])job\s*=\s*"keystore"`)
	dashboardJob = regexp.MustCompile(`(^|[{,\s])job\s*=~?\s*"\$job"`)
	ruleFor      = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
)

type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// checkRules returns the problems of an alerting rule file.
func checkRules(data []byte, names map[string]bool) []string {
	var f ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return []string{err.Error()}
	}
	var problems []string
	seen := map[string]bool{}
	for _, g := range f.Groups {
		for i, r := range g.Rules {
			id := fmt.Sprintf("group %s rule %d", g.Name, i)
			if r.Alert == "" {
				problems = append(problems, id+": not an alert (record: "+r.Record+")")
				continue
			}
			id = "alert " + r.Alert
			if seen[r.Alert] {
				problems = append(problems, id+": defined twice")
			}
			seen[r.Alert] = true
			if !ruleFor.MatchString(r.For) {
				problems = append(problems, fmt.Sprintf("%s: no for (or not a duration: %q)", id, r.For))
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
				problems = append(problems, fmt.Sprintf("%s: severity %q, want critical, warning or info", id, s))
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					problems = append(problems, id+": no "+a+" annotation")
				}
			}
			p, _ := checkExpr(r.Expr, names, ruleJob, `job="keystore"`)
			for _, p := range p {
				problems = append(problems, id+": "+p)
			}
		}
	}
	// What the issue asks alerts for.
	for _, a := range []string{"KeystoreNoLeader", "KeystoreClusterNoLeader", "KeystoreFollowerLagging", "KeystoreFsyncSlow",
		"KeystoreDiskGrowing", "KeystoreDiskFillingUp", "KeystoreDiskAlmostFull", "KeystoreNamespaceRecordsNearFull", "KeystoreNamespaceBytesNearFull"} {
		if !seen[a] {
			problems = append(problems, "no alert "+a)
		}
	}
	return problems
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

var labelValues = regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// checkDashboard returns the problems of a Grafana dashboard.
func checkDashboard(data []byte, names map[string]bool) []string {
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return []string{err.Error()}
	}
	var problems []string
	if d.UID == "" || d.Title == "" {
		problems = append(problems, "no uid or title")
	}
	if d.SchemaVersion < 36 {
		problems = append(problems, fmt.Sprintf("schemaVersion %d: want 36 or later (datasource variables by uid)", d.SchemaVersion))
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Type {
		case "datasource":
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" {
				problems = append(problems, fmt.Sprintf("variable %s: query %s, want \"prometheus\"", v.Name, v.Query))
			}
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				problems = append(problems, fmt.Sprintf("variable %s: %v", v.Name, err))
				continue
			}
			m := labelValues.FindStringSubmatch(q.Query)
			if m == nil {
				problems = append(problems, fmt.Sprintf("variable %s: query %q, want label_values(metric, label)", v.Name, q.Query))
				continue
			}
			sels, err := selectors(m[1])
			if err != nil || len(sels) != 1 {
				problems = append(problems, fmt.Sprintf("variable %s: query %q: want one metric", v.Name, q.Query))
				continue
			}
			if !names[sels[0].name] {
				problems = append(problems, fmt.Sprintf("variable %s: unknown metric %s%s", v.Name, sels[0].name, nearest(sels[0].name, names)))
			}
		}
	}
	for _, v := range []string{"datasource", "job", "namespace"} {
		if !vars[v] {
			problems = append(problems, "no variable "+v)
		}
	}
	ids := map[int]bool{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			id := fmt.Sprintf("panel %d %q", p.ID, p.Title)
			if ids[p.ID] {
				problems = append(problems, id+": id used twice")
			}
			ids[p.ID] = true
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				problems = append(problems, id+": datasource is not ${datasource}")
			}
			if len(p.Targets) == 0 {
				problems = append(problems, id+": no queries")
			}
			known := 0
			for _, tg := range p.Targets {
				ps, k := checkExpr(tg.Expr, names, dashboardJob, `job="$job"`)
				known += k
				for _, pr := range ps {
					problems = append(problems, fmt.Sprintf("%s query %s: %s", id, tg.RefID, pr))
				}
			}
			if known == 0 {
				problems = append(problems, id+": queries nothing keystored exports")
			}
		}
	}
	walk(d.Panels)
	return problems
}

// nearest names the exported metric closest to an unknown one, as a hint.
func nearest(name string, names map[string]bool) string {
	best, bestD := "", 1<<30
	var all []string
	for n := range names {
		all = append(all, n)
	}
	sort.Strings(all)
	for _, n := range all {
		if d := editDistance(name, n); d < bestD {
			best, bestD = n, d
		}
	}
	if best == "" || bestD > len(name)/3 {
		return ""
	}
	return "; did you mean " + best + "?"
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// TestPromtool runs Prometheus's own checks of the rules (syntax and
// PromQL), their unit tests (alerts_test.yml: each alert fires on the
// series it is meant for, with the labels and annotations expected) and
// the sample configuration. It is skipped without promtool, except in CI
// (CI set), which installs it (.ci/run: Debian's prometheus package).
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not on PATH; CI installs Debian's prometheus package (.ci/run)")
		}
		t.Skip("promtool not on PATH (Debian: apt-get install prometheus)")
	}
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
		{"check", "config", "prometheus.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestSelectors checks the PromQL tokenizer the checks rely on.
func TestSelectors(t *testing.T) {
	for _, tt := range []struct {
		expr string
		want []string // name{matchers}
	}{
		{`up{job="keystore"} == 0`, []string{`up{job="keystore"}`}},
		{`sum by (job, le) (rate(a_bucket{job="x", l=~"y{}"}[5m])) / on (instance) group_left (foo) b > 0.9`,
			[]string{`a_bucket{job="x", l=~"y{}"}`, `b{}`}},
		{`max(x) without (instance) - ignoring(a) y offset 1h and z unless w or v @ start()`,
			[]string{`x{}`, `y{}`, `z{}`, `w{}`, `v{}`}},
		{`histogram_quantile(0.99, sum(rate(h_bucket{job="$job", ns=~"$namespace"}[$__rate_interval]))) > 1e-3 * 2`,
			[]string{`h_bucket{job="$job", ns=~"$namespace"}`}},
		{`predict_linear(d[6h:5m], 24 * 3600) > 2 * count(e) # comment f`, []string{`d{}`, `e{}`}},
		{`topk(3, a) + label_replace(b, "dst", "$1", "src", "(.*)") + c${x}`, []string{`a{}`, `b{}`, `c{}`}},
	} {
		sels, err := selectors(tt.expr)
		if err != nil {
			t.Errorf("%s: %v", tt.expr, err)
			continue
		}
		var got []string
		for _, s := range sels {
			got = append(got, s.name+"{"+s.matchers+"}")
		}
		if strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("selectors(%s) = %q; want %q", tt.expr, got, tt.want)
		}
	}
	for _, bad := range []string{`a{b="c"`, `rate(a[5m)`, `a{b="c}`} {
		if _, err := selectors(bad); err == nil {
			t.Errorf("selectors(%s): no error", bad)
		}
	}
}

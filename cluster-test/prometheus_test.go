package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestPrometheusScrapesCluster runs `make cluster`'s script
// (scripts/cluster.sh: three keystored processes, gossip, each with an
// admin listener) with its ports moved by a free offset and a namespace
// quota of 10 records from the environment, writes 10 records,
// and runs a real Prometheus (Debian's package) with
// deploy/prometheus/prometheus.yml, its targets replaced by the nodes',
// scraping and evaluating every second. Prometheus must find the three
// targets up, exactly one leader, the claims counted, every rule of
// deploy/prometheus/alerts.yml loaded and evaluating without error, and
// one alert pending: KeystoreNamespaceRecordsNearFull for the full
// namespace, no other (a fresh healthy cluster trips nothing else).
//
// Skipped without a prometheus binary on PATH, except in CI (CI set),
// which installs it (.ci/run).
func TestPrometheusScrapesCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus not on PATH; CI installs Debian's prometheus package (.ci/run)")
		}
		t.Skip("prometheus not on PATH (Debian: apt-get install prometheus)")
	}
	began := time.Now()
	bin := buildKeystored(t)
	t.Logf("built keystored in %v", time.Since(began).Round(time.Millisecond))

	// `make cluster` itself: scripts/cluster.sh with the binary just
	// built, its data under root and its ports moved by a free offset; the
	// quota comes from the environment, as any keystored flag may.
	names := []string{"n1", "n2", "n3"}
	root := t.TempDir()
	off := freePortOffset(t)
	client, metrics := map[string]string{}, map[string]string{}
	for i, n := range names {
		client[n] = fmt.Sprintf("127.0.0.1:%d", 7001+i+off)
		metrics[n] = fmt.Sprintf("127.0.0.1:%d", 9101+i+off)
	}
	script := exec.Command("bash", "scripts/cluster.sh", bin)
	script.Dir = ".."
	script.Env = append(os.Environ(), "KEYSTORE_DATA="+root, fmt.Sprintf("KEYSTORE_PORT_OFFSET=%d", off), "KEYSTORE_NAMESPACE_MAX_RECORDS=10")
	scriptLog, err := os.Create(filepath.Join(root, "cluster.sh.log"))
	if err != nil {
		t.Fatal(err)
	}
	script.Stdout, script.Stderr = scriptLog, scriptLog
	// Its own process group: if the script does not stop its nodes, the
	// cleanup kills the group.
	script.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := script.Start(); err != nil {
		t.Fatal(err)
	}
	scriptDone := make(chan struct{})
	go func() { _ = script.Wait(); _ = scriptLog.Close(); close(scriptDone) }()
	t.Cleanup(func() {
		_ = script.Process.Signal(syscall.SIGTERM) // the script stops the three nodes (SIGTERM) and waits
		select {
		case <-scriptDone:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-script.Process.Pid, syscall.SIGKILL)
			<-scriptDone
		}
	})
	conn, err := grpc.NewClient(client["n1"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, n := range names {
		waitHealthy(t, client[n], filepath.Join(root, n+".log"))
	}
	kv := keystorev1.NewKeyStoreServiceClient(conn)
	for i := range 10 {
		complete(t, kv, fmt.Sprintf("order-%d", i))
	}

	// Prometheus with the sample configuration, pointed at the three nodes.
	cfgPath, alerts := prometheusConfig(t, root, []string{metrics["n1"], metrics["n2"], metrics["n3"]})
	web := testcluster.FreeAddr(t)
	promLog := filepath.Join(root, "prometheus.log")
	startProcess(t, promLog, promBin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(root, "tsdb"),
		"--web.listen-address="+web, "--log.level=warn")
	api := "http://" + web + "/api/v1/"
	logs := func() string {
		var b strings.Builder
		for _, f := range []string{promLog, filepath.Join(root, "n1.log")} {
			data, _ := os.ReadFile(f)
			if len(data) > 4000 {
				data = data[len(data)-4000:]
			}
			fmt.Fprintf(&b, "\n--- %s:\n%s", filepath.Base(f), data)
		}
		return b.String()
	}

	deadline := time.Now().Add(30 * time.Second)
	check := func(what string, ok func() (bool, string)) {
		t.Helper()
		var last string
		for {
			good, state := ok()
			if good {
				t.Logf("%s after %v: %s", what, time.Since(began).Round(time.Millisecond), state)
				return
			}
			last = state
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30 s; last: %s%s", what, last, logs())
			}
			time.Sleep(250 * time.Millisecond)
		}
	}

	check("three targets up", func() (bool, string) {
		var r struct {
			ActiveTargets []struct {
				Labels    map[string]string `json:"labels"`
				Health    string            `json:"health"`
				LastError string            `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := promGet(api+"targets?state=active", &r); err != nil {
			return false, err.Error()
		}
		up := 0
		var states []string
		for _, tg := range r.ActiveTargets {
			if tg.Labels["job"] == "keystore" && tg.Health == "up" {
				up++
			}
			states = append(states, tg.Labels["instance"]+" "+tg.Health+" "+tg.LastError)
		}
		return up == 3 && len(r.ActiveTargets) == 3, strings.Join(states, "; ")
	})
	check("one leader", func() (bool, string) {
		v, err := promScalar(api, `sum(keystore_raft_is_leader{job="keystore"})`)
		return err == nil && v == 1, fmt.Sprint(v, err)
	})
	check("claims counted", func() (bool, string) {
		v, err := promScalar(api, `sum(keystore_claims_total{job="keystore"})`)
		return err == nil && v >= 10, fmt.Sprint(v, err)
	})
	check("quota exported", func() (bool, string) {
		v, err := promScalar(api, `min(keystore_namespace_quota_records{job="keystore"}) * count(keystore_namespace_quota_records{job="keystore"})`)
		return err == nil && v == 30, fmt.Sprint(v, err)
	})
	check("every rule loaded and healthy", func() (bool, string) {
		var r struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Type      string `json:"type"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := promGet(api+"rules", &r); err != nil {
			return false, err.Error()
		}
		ok, n := true, 0
		var bad []string
		for _, g := range r.Groups {
			for _, rule := range g.Rules {
				n++
				if rule.Type != "alerting" || rule.Health != "ok" {
					ok = false
					bad = append(bad, rule.Name+" "+rule.Type+" "+rule.Health+" "+rule.LastError)
				}
			}
		}
		return ok && n == alerts, fmt.Sprintf("%d rules of %d; not ok: %q", n, alerts, bad)
	})
	active := func() []string {
		t.Helper()
		var r struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		if err := promGet(api+"alerts", &r); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range r.Alerts {
			got = append(got, a.Labels["alertname"]+"{namespace="+a.Labels["namespace"]+"} "+a.State)
		}
		sort.Strings(got)
		return got
	}
	want := "KeystoreNamespaceRecordsNearFull{namespace=e2e} pending"
	check("the quota alert pending", func() (bool, string) {
		got := active()
		return slices.Contains(got, want), fmt.Sprint(got)
	})
	// Three more evaluations, rates with two samples and more: still no
	// other alert.
	time.Sleep(3 * time.Second)
	if got := active(); len(got) != 1 || got[0] != want {
		t.Fatalf("alerts %q; want only %q%s", got, want, logs())
	}
	t.Logf("done in %v", time.Since(began).Round(time.Millisecond))
}

// freePortOffset returns an offset that puts every port scripts/cluster.sh
// uses (7001-7003, 7101-7103, 7201-7203 and 9101-9103, moved by it) on free
// ports between 20000 and Linux's ephemeral range (32768), above the
// in-process test clusters' ports (testcluster.FreeAddr).
func freePortOffset(t *testing.T) int {
	t.Helper()
	bases := []int{7001, 7002, 7003, 7101, 7102, 7103, 7201, 7202, 7203, 9101, 9102, 9103}
	for range 100 {
		off := 13000 + rand.IntN(23000-13000)
		free := true
		for _, b := range bases {
			addr := fmt.Sprintf("127.0.0.1:%d", b+off)
			l, err := net.Listen("tcp", addr)
			if err != nil {
				free = false
				break
			}
			_ = l.Close()
			if b/100 == 72 { // gossip: UDP too
				pc, err := net.ListenPacket("udp", addr)
				if err != nil {
					free = false
					break
				}
				_ = pc.Close()
			}
		}
		if free {
			return off
		}
	}
	t.Fatal("no free port offset for scripts/cluster.sh")
	return 0
}

// startProcess starts a process logging to logPath and stops it (SIGTERM,
// then SIGKILL after 10 s) when the test ends.
func startProcess(t *testing.T, logPath, bin string, args ...string) {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

func waitHealthy(t *testing.T, addr, logPath string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			return
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(logPath)
			t.Fatalf("%s not serving: %v %v\n%s", addr, resp, err, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// prometheusConfig writes deploy/prometheus/prometheus.yml with the
// keystore job's targets replaced by targets, scraping and evaluating every
// second, and its rule file by an absolute path; it returns the path and
// the number of alerts in the rule file.
func prometheusConfig(t *testing.T, dir string, targets []string) (string, int) {
	t.Helper()
	src := filepath.Join("..", "deploy", "prometheus")
	data, err := os.ReadFile(filepath.Join(src, "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
	rules, ok := cfg["rule_files"].([]any)
	if !ok || len(rules) != 1 {
		t.Fatalf("prometheus.yml: rule_files %v; want one file", cfg["rule_files"])
	}
	rulePath, err := filepath.Abs(filepath.Join(src, rules[0].(string)))
	if err != nil {
		t.Fatal(err)
	}
	cfg["rule_files"] = []any{rulePath}
	jobs, _ := cfg["scrape_configs"].([]any)
	found := false
	for _, j := range jobs {
		job, _ := j.(map[string]any)
		if job["job_name"] == "keystore" {
			job["static_configs"] = []any{map[string]any{"targets": targets}}
			found = true
		}
	}
	if !found {
		t.Fatal(`prometheus.yml: no scrape config with job_name "keystore" (the alerts select job="keystore")`)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	ruleData, err := os.ReadFile(rulePath)
	if err != nil {
		t.Fatal(err)
	}
	var rf struct {
		Groups []struct {
			Rules []map[string]any `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(ruleData, &rf); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rf.Groups {
		n += len(g.Rules)
	}
	return path, n
}

// promGet GETs a Prometheus API URL and decodes its data into v.
func promGet(u string, v any) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("%s: %s: %v", u, resp.Status, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s: %s", u, r.Error)
	}
	return json.Unmarshal(r.Data, v)
}

// promScalar runs an instant query whose answer is one sample.
func promScalar(api, query string) (float64, error) {
	var r struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := promGet(api+"query?query="+url.QueryEscape(query), &r); err != nil {
		return 0, err
	}
	if len(r.Result) != 1 {
		return 0, fmt.Errorf("%s: %d samples", query, len(r.Result))
	}
	s, _ := r.Result[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}

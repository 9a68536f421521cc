// Package deploy holds what an operator deploys next to keystored: a
// Grafana dashboard (grafana/keystore.json), Prometheus alerting rules
// (prometheus/alerts.yml, with promtool unit tests in
// prometheus/alerts_test.yml) and a sample scrape configuration for the
// three nodes of `make cluster` (prometheus/prometheus.yml). README.md says
// how to use them.
//
// It has no Go code to import: its test checks the files against the
// metrics a real node exports. Every metric named in an alert expression,
// a dashboard query or a template variable must be one keystored serves on
// --metrics-addr (a histogram by its _bucket, _sum or _count series), every
// selector must name the job (job="keystore" in the rules, job="$job" in
// the dashboard), every rule needs a for, a severity and a summary and
// description, and every panel must query something exported. With
// promtool on PATH the test also runs promtool check rules, check config
// and test rules. cluster-test/prometheus_test.go scrapes a real
// three-node cluster with a real Prometheus and this configuration.
package deploy

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/testcluster"
)

// cli runs keystorectl with args and returns its exit status and output.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// mustCLI runs keystorectl and fails the test unless it exits 0.
func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := cli(t, args...)
	if code != 0 {
		t.Fatalf("keystorectl %s: exit %d; want 0\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// textFields parses "key: value" lines; a repeated key keeps its first value.
func textFields(t *testing.T, out string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.ContainsAny(k, " \t") {
			t.Fatalf("line %q is not key: value", line)
		}
		if _, seen := m[k]; !seen {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// jsonLines decodes one JSON object per line.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not a JSON object: %v", line, err)
		}
		objs = append(objs, m)
	}
	return objs
}

func jsonOne(t *testing.T, out string) map[string]any {
	t.Helper()
	objs := jsonLines(t, out)
	if len(objs) != 1 {
		t.Fatalf("got %d JSON objects; want 1:\n%s", len(objs), out)
	}
	return objs[0]
}

func TestAgainstCluster(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	eps := "--endpoints=" + strings.Join(tc.Endpoints(), ",")

	t.Run("lifecycle", func(t *testing.T) {
		key := []string{"--namespace", "payments", "--key", "order-42"}
		claim := append([]string{"claim", eps, "--fingerprint", "v1", "--owner", "test-owner", "--lease", "1m"}, key...)

		// Claim: ACQUIRED with a token, shown as aligned text.
		out := mustCLI(t, claim...)
		f := textFields(t, out)
		if f["outcome"] != "ACQUIRED" || f["state"] != "IN_PROGRESS" || f["owner"] != "test-owner" || f["attempt"] != "1" {
			t.Fatalf("first claim:\n%s\nwant outcome ACQUIRED, state IN_PROGRESS, owner test-owner, attempt 1", out)
		}
		if !strings.HasPrefix(f["fingerprint"], `"v1"`) || f["lease_expires_at"] == "" {
			t.Fatalf("first claim:\n%s\nwant the fingerprint \"v1\" and a lease", out)
		}
		if !strings.Contains(out, "outcome:          ACQUIRED\n") {
			t.Fatalf("first claim:\n%s\nwant the values aligned after the longest key (lease_expires_at)", out)
		}
		token := f["token"]
		if n, err := strconv.ParseUint(token, 10, 64); err != nil || n == 0 {
			t.Fatalf("token %q is not a positive integer", token)
		}

		// A second claim (global flags before the command) sees it in progress.
		rec := jsonOne(t, mustCLI(t, append([]string{"-o", "json", eps, "claim", "--fingerprint", "v1"}, key...)...))
		if rec["outcome"] != "IN_PROGRESS" || fmt.Sprint(rec["record"].(map[string]any)["token"]) != "0" {
			t.Fatalf("second claim: %v; want IN_PROGRESS without the holder's token", rec)
		}

		hb := jsonOne(t, mustCLI(t, append([]string{"heartbeat", eps, "-o", "json", "--token", token, "--lease", "2m"}, key...)...))
		lease, err := time.Parse(time.RFC3339Nano, hb["record"].(map[string]any)["lease_expires_at"].(string))
		if err != nil || time.Until(lease) < 90*time.Second {
			t.Fatalf("heartbeat: lease_expires_at %v (%v); want about 2m from now", lease, err)
		}

		body := `{"charge":"ch_1"}`
		done := jsonOne(t, mustCLI(t, append([]string{"complete", eps, "-o", "json", "--token", token, "--code", "201",
			"--body", body, "--header", "content-type=application/json"}, key...)...))
		checkCompleted(t, "complete", done["record"], token, body)

		got := jsonOne(t, mustCLI(t, append([]string{"get", eps, "-o", "json"}, key...)...))
		checkCompleted(t, "get", got["record"], token, body)
		stale := textFields(t, mustCLI(t, append([]string{"get", eps, "--stale"}, key...)...))
		if stale["state"] != "COMPLETED" {
			t.Fatalf("get --stale: state %q; want COMPLETED", stale["state"])
		}

		// Every later claim replays the stored response.
		out = mustCLI(t, claim...)
		f = textFields(t, out)
		if f["outcome"] != "COMPLETED" || f["response.code"] != "201" || f["response.body"] != body ||
			f["response.header"] != "content-type: application/json" || f["completed_at"] == "" {
			t.Fatalf("replay claim:\n%s\nwant outcome COMPLETED with the stored response", out)
		}
		replay := jsonOne(t, mustCLI(t, append(claim, "-o", "json")...))
		if replay["outcome"] != "COMPLETED" {
			t.Fatalf("replay claim (json): %v; want outcome COMPLETED", replay)
		}
		if _, ok := replay["token"]; ok {
			t.Fatalf("replay claim (json): %v; want no claim token (only ACQUIRED has one)", replay)
		}
		checkCompleted(t, "replay claim", replay["record"], token, body)

		// Complete is idempotent; the first response wins.
		again := jsonOne(t, mustCLI(t, append([]string{"complete", eps, "-o", "json", "--token", token, "--body", "other"}, key...)...))
		checkCompleted(t, "second complete", again["record"], token, body)

		wantExit1(t, "fingerprint mismatch", append([]string{"claim", eps, "--fingerprint-hex", "beef"}, key...)...)
		wantExit1(t, "already completed", append([]string{"release", eps, "--token", token}, key...)...)
		wantExit1(t, "already completed", append([]string{"heartbeat", eps, "--token", token}, key...)...)
	})

	t.Run("claim lost", func(t *testing.T) {
		key := []string{"--namespace", "payments", "--key", "order-43"}
		f := textFields(t, mustCLI(t, append([]string{"claim", eps}, key...)...))
		token, _ := strconv.ParseUint(f["token"], 10, 64)
		wrong := strconv.FormatUint(token+1000, 10)
		wantExit1(t, "claim lost", append([]string{"complete", eps, "--token", wrong}, key...)...)
		wantExit1(t, "claim lost", append([]string{"heartbeat", eps, "--token", wrong}, key...)...)
		wantExit1(t, "claim lost", append([]string{"release", eps, "--token", wrong}, key...)...)
		// The rightful holder can still release, after which the next claim acquires.
		out := mustCLI(t, append([]string{"release", eps, "--token", f["token"]}, key...)...)
		if textFields(t, out)["released"] != "true" {
			t.Fatalf("release:\n%s\nwant released: true", out)
		}
		if g := textFields(t, mustCLI(t, append([]string{"claim", eps}, key...)...)); g["outcome"] != "ACQUIRED" || g["token"] == f["token"] {
			t.Fatalf("claim after release: %v; want ACQUIRED with a new token", g)
		}
		wantExit1(t, "claim lost", "complete", eps, "--namespace", "payments", "--key", "never-claimed", "--token", "7")
	})

	t.Run("errors", func(t *testing.T) {
		wantExit1(t, "not found", "get", eps, "--namespace", "payments", "--key", "absent")
		wantExit1(t, "invalid argument: namespace:", "get", eps, "--namespace", "Not Valid", "--key", "k")
		wantExit1(t, "--body-file", "complete", eps, "--namespace", "payments", "--key", "k", "--token", "1",
			"--body-file", filepath.Join(t.TempDir(), "missing"))
	})

	t.Run("body file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "body")
		body := []byte{0, 1, 2, 0xff, '\n'}
		if err := os.WriteFile(path, body, 0o600); err != nil {
			t.Fatal(err)
		}
		key := []string{"--namespace", "files", "--key", "binary"}
		token := textFields(t, mustCLI(t, append([]string{"claim", eps}, key...)...))["token"]
		out := mustCLI(t, append([]string{"complete", eps, "--token", token, "--body-file", path}, key...)...)
		if got := textFields(t, out)["response.body"]; got != `"\x00\x01\x02\xff\n"` {
			t.Fatalf("binary body shown as %s; want it Go-quoted", got)
		}
		rec := jsonOne(t, mustCLI(t, append([]string{"get", eps, "-o", "json"}, key...)...))
		resp := rec["record"].(map[string]any)["response"].(map[string]any)
		if resp["body"] != "AAEC/wo=" || resp["code"] != float64(200) {
			t.Fatalf("binary body in JSON: %v; want base64 AAEC/wo= and the default code 200", resp)
		}
	})

	t.Run("status", func(t *testing.T) {
		out := mustCLI(t, "status", eps)
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "ENDPOINT") {
			t.Fatalf("status:\n%s\nwant a header and 3 rows", out)
		}
		leaders := map[string]bool{}
		for _, l := range lines[1:] {
			cols := strings.Fields(l)
			// The cluster version is 1 until the leader raised it (within
			// seconds of the start).
			if len(cols) != 9 || cols[7] != "true" || (cols[8] != "1" && cols[8] != "2") {
				t.Fatalf("status row %q; want 9 columns: serving true, then the cluster version", l)
			}
			leaders[cols[2]] = true
		}
		if len(leaders) != 1 || leaders["-"] {
			t.Fatalf("status:\n%s\nwant every node to name the same leader", out)
		}

		objs := jsonLines(t, mustCLI(t, "status", eps, "-o", "json"))
		if len(objs) != 3 {
			t.Fatalf("status -o json: %d objects; want 3", len(objs))
		}
		for _, o := range objs {
			members := o["members"].([]any)
			var lead []string
			for _, m := range members {
				if m := m.(map[string]any); m["is_leader"] == true {
					lead = append(lead, m["name"].(string))
				}
			}
			if len(members) != 3 || len(lead) != 1 || o["leader"] != lead[0] || !leaders[lead[0]] {
				t.Fatalf("status of %v: members %v; want 3 members, one leader, agreeing with the text", o["endpoint"], members)
			}
			if o["serving"] != true || o["applied_index"].(float64) == 0 {
				t.Fatalf("status of %v: %v; want serving with an applied index", o["endpoint"], o)
			}
		}
	})

	t.Run("version", func(t *testing.T) {
		out := mustCLI(t, "version", eps)
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "keystorectl: keystore ") {
			t.Fatalf("version:\n%s\nwant keystorectl's line and one per endpoint", out)
		}
		for _, l := range lines[1:] {
			if !strings.Contains(l, ": keystore ") || !strings.Contains(l, " commit ") {
				t.Fatalf("version row %q; want the endpoint's keystore version and commit", l)
			}
		}
		o := jsonOne(t, mustCLI(t, "version", eps, "-o", "json"))
		if servers := o["servers"].([]any); len(servers) != 3 || servers[0].(map[string]any)["version"] == "" {
			t.Fatalf("version -o json: %v; want 3 servers with versions", o)
		}
	})

	t.Run("endpoint health", func(t *testing.T) {
		// The endpoints from the environment, as an operator's shell has them.
		t.Setenv(endpointsEnv, strings.TrimPrefix(eps, "--endpoints="))
		out := mustCLI(t, "endpoint", "health")
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "ENDPOINT") {
			t.Fatalf("endpoint health:\n%s\nwant a header and 3 rows", out)
		}
		for _, l := range lines[1:] {
			if !strings.Contains(l, " SERVING ") {
				t.Fatalf("endpoint health row %q; want SERVING", l)
			}
		}
		down := testcluster.FreeAddr(t)
		code, out, errOut := cli(t, "endpoint", "health", "--endpoints", tc.Endpoint("n1")+","+down, "--timeout", "1s")
		if code != exitUnreachable || !strings.Contains(out, "SERVING") || !strings.Contains(errOut, down+" did not answer") {
			t.Fatalf("endpoint health with one down: exit %d, stdout %q, stderr %q; want exit 3 naming it", code, out, errOut)
		}
	})

	t.Run("status with a node down", func(t *testing.T) {
		down := testcluster.FreeAddr(t)
		out := mustCLI(t, "status", "--endpoints", tc.Endpoint("n1")+","+down)
		t.Logf("status with a node down:\n%s", out)
		if !strings.Contains(out, down+"  error: unavailable") {
			t.Fatalf("status:\n%s\nwant a row saying %s is unavailable", out, down)
		}
		code, out, errOut := cli(t, "status", "--endpoints", down)
		if code != exitUnreachable || !strings.Contains(out, down+"  error: unavailable") || errOut != "keystorectl status: no endpoint answered (1 tried; each row says why)\n" {
			t.Fatalf("status of a dead endpoint: exit %d, stdout %q, stderr %q; want exit 3, its row, and one line saying no endpoint answered", code, out, errOut)
		}
	})

	// With discovery (the default) or without, one endpoint is enough; status
	// asks exactly the endpoints given either way.
	t.Run("one endpoint", func(t *testing.T) {
		one := "--endpoints=" + tc.Endpoint("n2")
		for i, flags := range [][]string{{one}, {one, "--no-discovery"}} {
			key := []string{"--namespace", "one", "--key", fmt.Sprint("k", i)}
			if f := textFields(t, mustCLI(t, append(append([]string{"claim"}, flags...), key...)...)); f["outcome"] != "ACQUIRED" {
				t.Fatalf("claim %v: %v; want ACQUIRED", flags, f)
			}
		}
		out := mustCLI(t, "status", one)
		if lines := strings.Split(strings.TrimRight(out, "\n"), "\n"); len(lines) != 2 {
			t.Fatalf("status of one endpoint:\n%s\nwant a header and 1 row", out)
		}
	})
}

// checkCompleted checks a JSON record is COMPLETED by token with body.
func checkCompleted(t *testing.T, what string, v any, token, body string) {
	t.Helper()
	rec, _ := v.(map[string]any)
	resp, _ := rec["response"].(map[string]any)
	if rec["state"] != "COMPLETED" || fmt.Sprint(rec["token"]) != token || resp == nil {
		t.Fatalf("%s: record %v; want COMPLETED by token %s with a response", what, rec, token)
	}
	if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["completed_at"])); err != nil {
		t.Fatalf("%s: completed_at %v is not RFC 3339: %v", what, rec["completed_at"], err)
	}
	var raw []byte
	if err := json.Unmarshal([]byte(strconv.Quote(fmt.Sprint(resp["body"]))), &raw); err != nil || string(raw) != body {
		t.Fatalf("%s: response body %v decodes to %q (%v); want base64 of %q", what, resp["body"], raw, err, body)
	}
	if resp["code"] != float64(201) || resp["metadata"].(map[string]any)["content-type"] != "application/json" {
		t.Fatalf("%s: response %v; want code 201 and content-type application/json", what, resp)
	}
}

// wantExit1 runs keystorectl and fails unless it exits 1 with one line on
// stderr containing want.
func wantExit1(t *testing.T, want string, args ...string) {
	t.Helper()
	wantExit(t, exitError, want, args...)
}

// wantExit runs keystorectl and wants exit status code and one line of
// stderr containing want.
func wantExit(t *testing.T, exit int, want string, args ...string) {
	t.Helper()
	code, out, errOut := cli(t, args...)
	if code != exit || !strings.Contains(errOut, want) || strings.Count(errOut, "\n") != 1 || out != "" {
		t.Fatalf("keystorectl %s: exit %d, stdout %q, stderr %q; want exit %d and one line containing %q",
			strings.Join(args, " "), code, out, errOut, exit, want)
	}
}

func TestUsage(t *testing.T) {
	// Nothing listens here: a usage error must be found before dialing.
	eps := "--endpoints=127.0.0.1:1"
	key := []string{"--namespace", "ns", "--key", "k"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "no command given"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"claim", "--nope"}, "flag provided but not defined: -nope"},
		{"missing namespace", []string{"claim", eps, "--key", "k"}, "--namespace is required"},
		{"missing key", []string{"get", eps, "--namespace", "ns"}, "--key is required"},
		{"missing token", append([]string{"complete", eps}, key...), "--token is required"},
		{"release without token", append([]string{"release", eps}, key...), "--token is required"},
		{"heartbeat without token", append([]string{"heartbeat", eps}, key...), "--token is required"},
		{"bad output", append([]string{"get", eps, "-o", "yaml"}, key...), `"yaml" is not text or json`},
		{"bad timeout", append([]string{"get", eps, "--timeout", "0s"}, key...), "--timeout must be positive"},
		{"no endpoints", append([]string{"get", "--endpoints", " , "}, key...), "no endpoint given"},
		{"two fingerprints", append([]string{"claim", eps, "--fingerprint", "a", "--fingerprint-hex", "61"}, key...), "not both"},
		{"bad hex", append([]string{"claim", eps, "--fingerprint-hex", "xyz"}, key...), "--fingerprint-hex"},
		{"negative lease", append([]string{"claim", eps, "--lease", "-1s"}, key...), "must not be negative"},
		{"bad header", append([]string{"complete", eps, "--token", "1", "--header", "novalue"}, key...), "is not key=value"},
		{"header twice", append([]string{"complete", eps, "--token", "1", "--header", "a=1", "--header", "a=2"}, key...), `"a" given twice`},
		{"two bodies", append([]string{"complete", eps, "--token", "1", "--body", "x", "--body-file", "/dev/null"}, key...), "not both"},
		{"bad code", append([]string{"complete", eps, "--token", "1", "--code", "99999999999"}, key...), "32 bits"},
		{"bad token", append([]string{"release", eps, "--token", "-3"}, key...), "invalid value"},
		{"positional argument", append([]string{"get", eps, "extra"}, key...), `unexpected argument "extra"`},
		{"help of unknown", []string{"help", "nope"}, `unknown command "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := cli(t, tc.args...)
			if code != 2 || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "Usage: keystorectl") || out != "" {
				t.Fatalf("keystorectl %s: exit %d, stdout %q, stderr %q; want exit 2, %q and the usage on stderr",
					strings.Join(tc.args, " "), code, out, errOut, tc.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help"}, {"help", "complete"}, {"complete", "-h"}} {
		code, out, errOut := cli(t, args...)
		if code != 0 || !strings.Contains(out, "Usage: keystorectl") || errOut != "" {
			t.Fatalf("keystorectl %s: exit %d, stdout %q, stderr %q; want exit 0 and the usage on stdout", strings.Join(args, " "), code, out, errOut)
		}
	}
	_, out, _ := cli(t, "help", "complete")
	for _, flag := range []string{"-body-file", "-header", "-token", "-code", "-endpoints", "-timeout"} {
		if !strings.Contains(out, flag) {
			t.Fatalf("help complete does not mention %s:\n%s", flag, out)
		}
	}
}

func TestUnreachable(t *testing.T) {
	code, _, errOut := cli(t, "get", "--endpoints", testcluster.FreeAddr(t), "--timeout", "1s", "--namespace", "ns", "--key", "k")
	if code != exitUnreachable || strings.Count(errOut, "\n") != 1 || !(strings.Contains(errOut, "unavailable") || strings.Contains(errOut, "timed out")) {
		t.Fatalf("get against a closed port: exit %d, stderr %q; want exit 3 (unreachable) and one line saying unavailable or timed out", code, errOut)
	}
}

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// largeReport is everything the large-state benchmark measured; it becomes
// the markdown report and the JSON lines.
type largeReport struct {
	Time       string  `json:"time"`
	NumCPU     int     `json:"nproc"`
	Kernel     string  `json:"kernel"`
	Dir        string  `json:"dir"`
	FSType     string  `json:"fstype"`
	FsyncsPerS float64 `json:"fsyncs_per_s"` // 0: not measured
	Flags      string  `json:"keystored_flags"`
	Settings   string  `json:"settings"`
	// Only is -only ("membership": the membership steps alone).
	Only string `json:"only,omitempty"`
	// The paced writes of the membership steps, and the longest gap in
	// them that is not a failure.
	MemberRate     float64 `json:"member_rate"`
	MemberWorkers  int     `json:"member_workers"`
	ElectionBoundS float64 `json:"election_bound_s"`

	Preloads   []*largePreload    `json:"-"`
	Throughput []*largeThroughput `json:"-"`
	Restarts   []*largeRestart    `json:"-"`
	CatchUps   []*largeCatchUp    `json:"-"`
	Joins      []*largeJoin       `json:"-"`
	Replaces   []*largeReplace    `json:"-"`
	Failures   []string           `json:"failures,omitempty"`
}

// largePreload is one preload to a state size (the throughput rows show
// it too).
type largePreload struct {
	Kind          string  `json:"kind"` // "preload"
	State         string  `json:"state"`
	Target        int64   `json:"target_records"`
	Preloaded     int64   `json:"preloaded"`
	PreloadS      float64 `json:"preload_s"`
	PreloadPerS   float64 `json:"preload_per_s"`
	PreloadErrors int64   `json:"preload_errors"`
}

// largeThroughput is one measured run at a state size.
type largeThroughput struct {
	Kind   string `json:"kind"` // "throughput"
	State  string `json:"state"`
	Target int64  `json:"target_records"`
	// Records is what the leader stores when the run starts.
	Records uint64 `json:"stored_records"`
	// Preload: lifecycles written to reach the state, and how fast.
	Preloaded     int64   `json:"preloaded"`
	PreloadS      float64 `json:"preload_s"`
	PreloadPerS   float64 `json:"preload_per_s"`
	PreloadErrors int64   `json:"preload_errors"`
	// DiskBytes is the leader's data directory before the run (the Raft
	// log's preallocated segments included); TableBytes its SSTables.
	DiskBytes  int64   `json:"leader_disk_bytes"`
	TableBytes int64   `json:"leader_sst_bytes"`
	Run        *result `json:"run"`
	// VsEmpty is lifecycles/s over the empty cluster's.
	VsEmpty float64 `json:"vs_empty"`
	// SettleS is how long the nodes took to fall idle before the run.
	SettleS float64 `json:"settle_s"`
	// OtherCores is the CPU other processes of the machine used over the
	// window, in cores (the machine may be shared).
	OtherCores float64 `json:"other_cpu_cores"`
}

// largeRestart is one follower's restart.
type largeRestart struct {
	Kind       string  `json:"kind"` // "restart"
	State      string  `json:"state"`
	Node       string  `json:"node"`
	Records    uint64  `json:"stored_records"`
	DiskBytes  int64   `json:"node_disk_bytes"`
	TableBytes int64   `json:"node_sst_bytes"`
	StopS      float64 `json:"stop_s"`   // SIGTERM → exited
	ListenS    float64 `json:"listen_s"` // start → first health answer
	ServingS   float64 `json:"serving_s"`
	Err        string  `json:"error,omitempty"`
}

// largeCatchUp is one catch-up of a stopped follower.
type largeCatchUp struct {
	Kind     string `json:"kind"` // "catchup"
	State    string `json:"state"`
	Leader   string `json:"leader"`
	Follower string `json:"follower"`
	// Sender is the node that logged "sent snapshot" (the leader, unless
	// leadership moved); the table's sender RSS is its.
	Sender  string `json:"sender"`
	Records uint64 `json:"stored_records"`
	// DiskBytes is the leader's data directory when the follower restarts.
	DiskBytes  int64 `json:"leader_disk_bytes"`
	TableBytes int64 `json:"leader_sst_bytes"`

	// While the follower was down.
	StoppedApplied uint64  `json:"follower_applied_at_stop"`
	Written        int64   `json:"lifecycles_written"`
	WriteS         float64 `json:"write_s"`
	WriteErrors    int64   `json:"write_errors"`
	Entries        uint64  `json:"log_entries_while_down"`
	// SnapshotExpected: the leader's log advanced past the follower by
	// more than --snapshot-entries + --keep-entries, so it was compacted
	// beyond what the follower has.
	SnapshotExpected bool `json:"snapshot_expected"`

	// After the restart.
	CommitAtRestart uint64  `json:"leader_commit_at_restart"`
	CatchUpS        float64 `json:"catch_up_s"` // start → applied ≥ leader's commit
	ServingS        float64 `json:"serving_s"`  // start → health SERVING
	Snapshot        snapLog `json:"snapshot"`

	// RSS in bytes: before (sender and other follower just before the
	// restart; the receiver just before it was stopped) and peaks over
	// the catch-up, sampled every 100 ms.
	RSSBefore   map[string]int64 `json:"rss_before"`
	RSSPeak     map[string]int64 `json:"rss_peak"`
	RSSSamples  int              `json:"rss_samples"`
	ChecksumAt  uint64           `json:"checksum_equal_at"`
	ChecksumErr string           `json:"checksum_error,omitempty"`
	Err         string           `json:"error,omitempty"`
}

// snapLog is what the nodes' logs say about snapshot transfers.
type snapLog struct {
	Sent            []snapEvent `json:"sent,omitempty"`
	SendFailures    int         `json:"send_failures"`
	Received        []snapEvent `json:"received,omitempty"`
	ReceiveFailures int         `json:"receive_failures"`
	Applied         []snapEvent `json:"applied,omitempty"`
	FirstFailure    string      `json:"first_failure,omitempty"`
}

// snapEvent is one "sent snapshot", "received snapshot" or "applied
// snapshot" line.
type snapEvent struct {
	Node       string  `json:"node"`
	Index      uint64  `json:"index"`
	Bytes      int64   `json:"bytes,omitempty"`
	DurationMs float64 `json:"duration_ms,omitempty"`
	Tables     int64   `json:"tables,omitempty"`
	Records    int64   `json:"records,omitempty"`
}

// scanSnapLog reads a node's JSON log from offset and adds what it says
// about snapshots to l.
func scanSnapLog(l *snapLog, node string, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		msg, _ := m["msg"].(string)
		ev := snapEvent{Node: node, Index: uint64(num(m["index"])), Bytes: int64(num(m["bytes"])),
			DurationMs: durMs(m["duration"]), Tables: int64(num(m["tables"])), Records: int64(num(m["records"]))}
		switch {
		case msg == "sent snapshot":
			l.Sent = append(l.Sent, ev)
		case msg == "received snapshot":
			l.Received = append(l.Received, ev)
		case msg == "applied snapshot":
			l.Applied = append(l.Applied, ev)
		case strings.HasPrefix(msg, "sending snapshot failed"):
			l.SendFailures++
			if l.FirstFailure == "" {
				l.FirstFailure = fmt.Sprintf("%s: %s: %v", node, msg, m["err"])
			}
		case strings.HasPrefix(msg, "receiving snapshot failed"):
			l.ReceiveFailures++
			if l.FirstFailure == "" {
				l.FirstFailure = fmt.Sprintf("%s: %s: %v", node, msg, m["err"])
			}
		}
	}
	return sc.Err()
}

func num(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case string:
		var f float64
		if _, err := fmt.Sscan(x, &f); err == nil {
			return f
		}
	}
	return 0
}

// durMs reads a slog duration: nanoseconds from the JSON handler, or a
// string such as "1.5s".
func durMs(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x / 1e6
	case string:
		if d, err := time.ParseDuration(x); err == nil {
			return float64(d) / float64(time.Millisecond)
		}
	}
	return 0
}

// readSnapLogs scans every node's log from the given offsets.
func readSnapLogs(c *ksCluster, offsets map[string]int64) snapLog {
	var l snapLog
	for _, n := range c.nodes {
		f, err := os.Open(n.logPath)
		if err != nil {
			continue
		}
		if _, err := f.Seek(offsets[n.name], io.SeekStart); err == nil {
			_ = scanSnapLog(&l, n.name, f)
		}
		f.Close()
	}
	return l
}

// writeJSONLines writes one line per measurement (the machine first).
func (r *largeReport) writeJSONLines(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	head := struct {
		Kind string `json:"kind"`
		*largeReport
	}{"machine", r}
	err = enc.Encode(head)
	for _, t := range r.Preloads {
		err = errorsJoin(err, enc.Encode(t))
	}
	for _, t := range r.Throughput {
		err = errorsJoin(err, enc.Encode(t))
	}
	for _, t := range r.Restarts {
		err = errorsJoin(err, enc.Encode(t))
	}
	for _, t := range r.CatchUps {
		err = errorsJoin(err, enc.Encode(t))
	}
	for _, t := range r.Joins {
		err = errorsJoin(err, enc.Encode(t))
	}
	for _, t := range r.Replaces {
		err = errorsJoin(err, enc.Encode(t))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// markdown renders the report.
func (r *largeReport) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Large state\n\n")
	fmt.Fprintf(&b, "`make bench-large` (bench/large.sh), %s: %d cores, Linux %s, data in %s (%s)",
		r.Time, r.NumCPU, r.Kernel, r.Dir, r.FSType)
	if r.FsyncsPerS > 0 {
		fmt.Fprintf(&b, ", the disk does %s fdatasyncs/s (200 B appends, one writer)", commas(int64(r.FsyncsPerS+0.5)))
	}
	fmt.Fprintf(&b, ".\nThree `keystored` processes on loopback, `%s`. %s\n", r.Flags, r.Settings)
	if r.Only != "" {
		fmt.Fprintf(&b, "\nOnly the %s steps were run (`-only %s`).\n", r.Only, r.Only)
	}

	if len(r.Throughput) == 0 && len(r.Preloads) > 0 {
		b.WriteString("\n## Preload\n\n| state | preloaded | time | lifecycles/s | errors |\n|---|---:|---:|---:|---:|\n")
		for _, p := range r.Preloads {
			fmt.Fprintf(&b, "| %s | %s | %.0f s | %s | %d |\n", p.State, commas(p.Preloaded), p.PreloadS, commas(int64(p.PreloadPerS+0.5)), p.PreloadErrors)
		}
	}

	if len(r.Throughput) > 0 {
		run := r.Throughput[0].Run
		fmt.Fprintf(&b, "\n## Throughput on a loaded cluster\n\n")
		if run != nil {
			fmt.Fprintf(&b, "%d clients for %.0f s (after %.0f s of warm-up), %.0f%% retries, as in `make bench`; the goal is ≥ 0.8× the empty cluster's lifecycles/s.\n\n",
				run.Concurrency, run.DurationS, run.WarmupS, run.Dup*100)
		}
		b.WriteString("Before each run the nodes are left until idle (under 0.15 cores together; \"settle\"), so that the preload's compactions are not measured. \"Other CPU\": what the machine's other processes used during the run, in cores.\n\n")
		b.WriteString("| state | stored records | preload | settle | leader on disk (SSTables) | lifecycles/s | vs empty | claim p50 / p99 | complete p50 / p99 | server CPU s / 1k | other CPU | errors | misses |\n")
		b.WriteString("|---|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|\n")
		for _, t := range r.Throughput {
			preload := "—"
			if t.Preloaded > 0 {
				preload = fmt.Sprintf("%s in %.0f s (%s/s)", commas(t.Preloaded), t.PreloadS, commas(int64(t.PreloadPerS+0.5)))
				if t.PreloadErrors > 0 {
					preload += fmt.Sprintf(", %d errors", t.PreloadErrors)
				}
			}
			if t.Run == nil {
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | failed | | | | | | | |\n", t.State, commas(int64(t.Records)), preload, secs3(t.SettleS), disk(t.DiskBytes, t.TableBytes))
				continue
			}
			vs := "1.00×"
			if t.Target > 0 {
				vs = fmt.Sprintf("%.2f×", t.VsEmpty)
				if t.VsEmpty < 0.8 {
					vs = "**" + vs + "** (< 0.8)"
				}
			}
			cpu := "—"
			if t.Run.ServerCPUPer1k >= 0 {
				cpu = fmt.Sprintf("%.3f", t.Run.ServerCPUPer1k)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %.1f / %.1f ms | %.1f / %.1f ms | %s | %.2f | %d | %d |\n",
				t.State, commas(int64(t.Records)), preload, secs3(t.SettleS), disk(t.DiskBytes, t.TableBytes), commas(int64(t.Run.LifecyclesPerS+0.5)), vs,
				t.Run.ClaimP50Ms, t.Run.ClaimP99Ms, t.Run.CompleteP50Ms, t.Run.CompleteP99Ms, cpu, t.OtherCores, t.Run.Errors, t.Run.Misses)
		}
	}

	if len(r.Restarts) > 0 {
		b.WriteString("\n## Restart to serving\n\nA follower is stopped (SIGTERM) and started again; timed until its gRPC health (service \"\") says SERVING.\n\n")
		b.WriteString("| state | node | stored records | node on disk (SSTables) | SIGTERM → exit | start → listening | start → SERVING |\n")
		b.WriteString("|---|---|---:|---:|---:|---:|---:|\n")
		for _, t := range r.Restarts {
			if t.Err != "" {
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | failed: %s | |\n", t.State, t.Node, commas(int64(t.Records)), disk(t.DiskBytes, t.TableBytes), secs3(t.StopS), mdEscape(t.Err))
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", t.State, t.Node, commas(int64(t.Records)), disk(t.DiskBytes, t.TableBytes),
				secs3(t.StopS), secs3(t.ListenS), secs3(t.ServingS))
		}
	}

	if len(r.CatchUps) > 0 {
		b.WriteString("\n## Catch-up by snapshot\n\n")
		b.WriteString("A follower is stopped, lifecycles are written until the leader's log has moved past it by more than `--snapshot-entries` + `--keep-entries` (so the leader compacted what the follower lacks), then the follower starts again. Catch-up: start → its applied index reaches the leader's commit index. RSS (VmRSS) sampled every 100 ms over the catch-up; \"before\" is the sender's just before the restart and the receiver's just before it was stopped. Snapshot bytes and times are from the nodes' logs.\n\n")
		b.WriteString("| state | stored records | leader on disk (SSTables) | written while down | snapshot sent | catch-up | SERVING after | sender RSS before → peak | receiver RSS before → peak | other follower peak | checksums |\n")
		b.WriteString("|---|---:|---:|---|---|---:|---:|---|---|---:|---|\n")
		for _, t := range r.CatchUps {
			written := fmt.Sprintf("%s lifecycles, %s log entries, %.1f s", commas(t.Written), commas(int64(t.Entries)), t.WriteS)
			if !t.SnapshotExpected {
				written += " (not past the log: no snapshot expected)"
			}
			snap := "none logged"
			if n := len(t.Snapshot.Sent); n > 0 {
				s := t.Snapshot.Sent[n-1]
				snap = fmt.Sprintf("%s in %.1f s", mb(s.Bytes), s.DurationMs/1000)
				if len(t.Snapshot.Applied) > 0 {
					a := t.Snapshot.Applied[len(t.Snapshot.Applied)-1]
					snap += fmt.Sprintf(" (%d table%s)", a.Tables, plural(a.Tables))
				}
				if n > 1 {
					snap += fmt.Sprintf(", %d sends", n)
				}
			}
			if f := t.Snapshot.SendFailures + t.Snapshot.ReceiveFailures; f > 0 {
				snap += fmt.Sprintf(", %d failed", f)
			}
			sender := t.Sender
			if sender == "" {
				sender = t.Leader
			}
			other := ""
			for name, peak := range t.RSSPeak {
				if name != sender && name != t.Follower {
					other = mb(peak)
				}
			}
			sums := fmt.Sprintf("equal at %d", t.ChecksumAt)
			if t.ChecksumErr != "" {
				sums = "**" + mdEscape(t.ChecksumErr) + "**"
			}
			catch := secs3(t.CatchUpS)
			if t.Err != "" {
				catch = "failed: " + mdEscape(t.Err)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s → %s | %s → %s | %s | %s |\n",
				t.State, commas(int64(t.Records)), disk(t.DiskBytes, t.TableBytes), written, snap, catch, secs3(t.ServingS),
				mb(t.RSSBefore[sender]), mb(t.RSSPeak[sender]), mb(t.RSSBefore[t.Follower]), mb(t.RSSPeak[t.Follower]),
				other, sums)
		}
	}
	r.membershipMarkdown(&b)
	if len(r.Failures) > 0 {
		b.WriteString("\n## Failures\n\n")
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "- %s\n", mdEscape(f))
		}
	}
	return b.String()
}

// commas formats n with thousands separators.
func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// mb formats bytes as MB (10^6), or "—" when unknown.
func mb(n int64) string {
	switch {
	case n <= 0:
		return "—"
	case n < 100e3:
		return fmt.Sprintf("%.0f kB", float64(n)/1e3)
	case n < 10e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return commas(int64(float64(n)/1e6+0.5)) + " MB"
}

// disk formats a data directory's size and its SSTables'.
func disk(all, tables int64) string {
	return fmt.Sprintf("%s (%s)", mb(all), mb(tables))
}

func plural(n int64) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func secs3(s float64) string {
	if s <= 0 {
		return "—"
	}
	if s < 10 {
		return fmt.Sprintf("%.2f s", s)
	}
	return fmt.Sprintf("%.1f s", s)
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// membershipMarkdown renders the "Membership" section.
func (r *largeReport) membershipMarkdown(b *strings.Builder) {
	if len(r.Joins) == 0 && len(r.Replaces) == 0 {
		return
	}
	b.WriteString("\n## Membership\n\n")
	fmt.Fprintf(b, "While %s lifecycles/s are written (%d paced writers, no catching up on a missed slot), a node joins or is replaced. \"Learner\" and \"voter\": the leader's `MemberList` shows the node (a learner), then shows it no longer a learner (the leader promotes a learner once its match index is within 90%% of its log); \"SERVING\": the node's gRPC health (service \"\"); \"caught up\": its applied index reached the leader's commit index; all polled every 20 ms. \"Snapshot\": from the nodes' logs (\"sent snapshot\" on the sender, \"received\" and \"applied snapshot\" on the node). \"Longest gap\": the longest time in which no lifecycle completed, with when it began (from the start or the kill); more than an election (%.0f s: 10 ticks of 100 ms, randomised up to twice that) is a failure.\n",
		commas(int64(r.MemberRate)), r.MemberWorkers, r.ElectionBoundS)
	if len(r.Joins) > 0 {
		b.WriteString("\n### Join to voter\n\nA fourth node starts with an empty data dir and `--join` the three members' client addresses; times from its process's start. Then it is removed (`MemberRemove` through the leader) and must exit by itself with status 0; the four replicas' checksums are compared before.\n\n")
		b.WriteString("| state | stored records | leader on disk (SSTables) | learner | voter | SERVING | caught up | snapshot | leader RSS peak | joiner RSS peak | writes | longest gap | checksums | removal → exit (status) |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|---|\n")
		for _, j := range r.Joins {
			if j.Err != "" && j.VoterS == 0 {
				fmt.Fprintf(b, "| %s | %s | %s | failed: %s | | | | | | | | | | |\n", j.State, commas(int64(j.Records)), disk(j.DiskBytes, j.TableBytes), mdEscape(j.Err))
				continue
			}
			removal := "—"
			if j.ExitS > 0 {
				removal = fmt.Sprintf("%s → %s (%d)", shortSecs(j.RemoveS), secs3(j.ExitS), j.ExitCode)
				if j.ExitCode != 0 {
					removal = "**" + removal + "**"
				}
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				j.State, commas(int64(j.Records)), disk(j.DiskBytes, j.TableBytes), secs3(j.LearnerS), secs3(j.VoterS), secs3(j.ServingS), secs3(j.CaughtUpS),
				snapCell(j.Snapshot, j.BySnapshot), mb(j.RSSPeak[j.Leader]), mb(j.RSSPeak[j.Node]), writesCell(j.Load), gapCell(j.Load, r.ElectionBoundS),
				sumsCell(j.ChecksumAt, j.ChecksumErr), removal)
		}
	}
	if len(r.Replaces) > 0 {
		b.WriteString("\n### Replace a dead node\n\nA follower is killed (SIGKILL); then, as an operator would: `MemberRemove` of its id through the leader, its data dir wiped, the node started again with the same name and ports, an empty data dir and `--join` the other two (it joins under a new id). Times from the kill (\"started\" includes the wipe).\n\n")
		b.WriteString("| state | node (old id → new id) | removed | started | learner | voter | SERVING | caught up | kill → SERVING voter | snapshot | writes | longest gap | checksums |\n")
		b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|\n")
		for _, t := range r.Replaces {
			node := fmt.Sprintf("%s (%s → %s)", t.Node, t.OldID, t.NewID)
			if t.Err != "" && t.VoterServingS == 0 {
				fmt.Fprintf(b, "| %s | %s | %s | %s | failed: %s | | | | | | | | |\n", t.State, node, secs3(t.RemovedS), secs3(t.StartS), mdEscape(t.Err))
				continue
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | **%s** | %s | %s | %s | %s |\n",
				t.State, node, secs3(t.RemovedS), secs3(t.StartS), secs3(t.LearnerS), secs3(t.VoterS), secs3(t.ServingS), secs3(t.CaughtUpS),
				secs3(t.VoterServingS), snapCell(t.Snapshot, t.BySnapshot), writesCell(t.Load), gapCell(t.Load, r.ElectionBoundS),
				sumsCell(t.ChecksumAt, t.ChecksumErr))
		}
	}
}

// shortSecs is secs3 with milliseconds under 0.1 s.
func shortSecs(s float64) string {
	if s > 0 && s < 0.1 {
		return fmt.Sprintf("%.1f ms", s*1000)
	}
	return secs3(s)
}

func snapCell(l snapLog, by bool) string {
	if !by {
		return "**none received and applied**"
	}
	out := "received and applied"
	if n := len(l.Sent); n > 0 {
		s := l.Sent[n-1]
		out = fmt.Sprintf("%s in %.1f s", mb(s.Bytes), s.DurationMs/1000)
		if len(l.Applied) > 0 {
			a := l.Applied[len(l.Applied)-1]
			out += fmt.Sprintf(" (%d table%s)", a.Tables, plural(a.Tables))
		}
		if n > 1 {
			out += fmt.Sprintf(", %d sends", n)
		}
	}
	if f := l.SendFailures + l.ReceiveFailures; f > 0 {
		out += fmt.Sprintf(", %d failed", f)
	}
	return out
}

func writesCell(s *pacedStats) string {
	if s == nil || s.TargetPerS <= 0 {
		return "none"
	}
	return fmt.Sprintf("%s in %.0f s (%s/s), %d errors", commas(s.Stored), s.DurationS, commas(int64(s.perS()+0.5)), s.Errors)
}

func gapCell(s *pacedStats, bound float64) string {
	if s == nil || s.TargetPerS <= 0 {
		return "—"
	}
	out := fmt.Sprintf("%.3f s at %+.1f s", s.LongestGapS, s.GapStartS)
	if bound > 0 && s.LongestGapS > bound {
		out = "**" + out + "**"
	}
	return out
}

func sumsCell(at uint64, err string) string {
	if err != "" {
		return "**" + mdEscape(err) + "**"
	}
	if at == 0 {
		return "—"
	}
	return fmt.Sprintf("equal at %d", at)
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keystore-dev/keystore/backup"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc/status"
)

// The snapshot commands save and check backups (docs/backup.md); keystored
// restore makes a new cluster from one.

var snapshotSaveCommand = command{
	name: "snapshot save", synopsis: "FILE [--stale]", args: []string{"FILE"},
	summary: "Save a backup of the cluster's state, at one applied index, to FILE (an admin call).",
	details: "The first endpoint that answers streams the state as it applied it, while it goes on\n" +
		"serving; a follower serves it as well as the leader. Unless --stale, it first confirms with a\n" +
		"quorum that it has applied every write acknowledged before the call, so the backup holds\n" +
		"all of them. The file is written to FILE.part, synced, read back and verified, and only\n" +
		"then renamed to FILE (replacing it): FILE is never a truncated backup. --timeout bounds\n" +
		"the wait for each message, not the whole transfer; Ctrl-C stops it and removes FILE.part.\n" +
		"A backup holds the records and their log time, not the old cluster's membership, node\n" +
		"identities, TLS keys, authorization policy or configuration. Restore it with\n" +
		"  keystored restore --data-dir DIR --name NAME FILE\n" +
		"and start that node; the others join it with --join (docs/backup.md).",
	setup: setupSnapshotSave,
}

var snapshotStatusCommand = command{
	name: "snapshot status", synopsis: "FILE", args: []string{"FILE"},
	summary: "Check a backup file whole and show what it holds: index, term, records, size (exit 1 if damaged).",
	details: "Reads FILE from start to end and checks its format, header, length and SHA-256; it calls\n" +
		"no node. Exit 1, \"damaged\", when any check fails: never restore from such a file.\n" +
		"keystored restore checks the state's own framing and checksum as well.",
	setup: setupSnapshotStatus,
}

func setupSnapshotSave(fs *flag.FlagSet) func(e *env) error {
	stale := fs.Bool("stale", false, "back up the state as the answering node applied it, without confirming with a quorum first (works without a quorum; may miss the last acknowledged writes on a follower)")
	return func(e *env) error {
		path := e.args[0]
		if path == "" {
			return usageErrorf("FILE must not be empty")
		}
		if strings.HasSuffix(path, backup.PartSuffix) {
			return usageErrorf("FILE must not end in %s (the name of the file being written)", backup.PartSuffix)
		}
		c, err := e.dialCluster()
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		start := time.Now()
		var (
			info     *keystorev1.BackupInfo
			endpoint string
			sum      backup.Summary
		)
		for i, svc := range c.svcs {
			info = nil
			sum, err = backup.SaveFile(path, func(w io.Writer) error {
				var ierr error
				info, ierr = receiveBackup(ctx, svc, &keystorev1.BackupRequest{Stale: *stale}, e.g.timeout, w)
				return ierr
			})
			if err == nil {
				endpoint = c.endpoints[i]
				break
			}
			// Another node may answer; nothing of a failed attempt is kept.
			if ctx.Err() != nil || !retryableCode(status.Code(err)) {
				break
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted; %s removed: %w", path+backup.PartSuffix, ctx.Err())
			}
			return backupError(err)
		}
		return e.out.snapshotSaved(path, endpoint, info, sum, time.Since(start))
	}
}

// receiveBackup makes one Backup call and writes the file it streams to
// w. idle bounds the wait for each message. It returns the backup's info.
func receiveBackup(ctx context.Context, svc keystorev1.ClusterServiceClient, req *keystorev1.BackupRequest, idle time.Duration, w io.Writer) (*keystorev1.BackupInfo, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errIdle := fmt.Errorf("%w: no data from the node for %s (--timeout)", context.DeadlineExceeded, idle)
	timer := time.AfterFunc(idle, func() { cancel(errIdle) })
	defer timer.Stop()
	stream, err := svc.Backup(ctx, req)
	if err != nil {
		return nil, err
	}
	var info *keystorev1.BackupInfo
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if cause := context.Cause(ctx); errors.Is(cause, errIdle) {
				return info, cause
			}
			return info, err
		}
		timer.Reset(idle)
		if msg.GetInfo() != nil {
			info = msg.GetInfo()
		}
		if _, err := w.Write(msg.GetData()); err != nil {
			return info, err
		}
	}
	if info == nil {
		return nil, errors.New("the node sent no backup info")
	}
	return info, nil
}

// backupError maps a failed save's gRPC status to keystorectl's errors,
// as for the membership calls; any other error (a file that does not
// verify, a full disk) stays as it is.
func backupError(err error) error {
	if _, ok := status.FromError(err); ok {
		return fromClusterStatus(err)
	}
	return err
}

func setupSnapshotStatus(fs *flag.FlagSet) func(e *env) error {
	return func(e *env) error {
		path := e.args[0]
		if path == "" {
			return usageErrorf("FILE must not be empty")
		}
		start := time.Now()
		sum, err := backup.VerifyFile(path)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return e.out.snapshotStatus(path, sum, time.Since(start))
	}
}

// snapshotJSON is a backup as -o json shows it.
type snapshotJSON struct {
	File            string          `json:"file"`
	Endpoint        string          `json:"endpoint,omitempty"`
	Verified        bool            `json:"verified"`
	Size            int64           `json:"size"`
	FormatVersion   uint32          `json:"format_version"`
	KeystoreVersion string          `json:"keystore_version"`
	ClusterID       string          `json:"cluster_id"`
	Node            string          `json:"node"`
	Index           uint64          `json:"index"`
	Term            uint64          `json:"term"`
	Records         uint64          `json:"records"`
	LogTime         *time.Time      `json:"log_time,omitempty"`
	CreatedAt       *time.Time      `json:"created_at,omitempty"`
	Linearizable    bool            `json:"linearizable"`
	Members         []backup.Member `json:"members"`
	TookMS          int64           `json:"took_ms"`
}

func toSnapshotJSON(path string, sum backup.Summary, took time.Duration) snapshotJSON {
	h := sum.Header
	j := snapshotJSON{
		File: path, Verified: true, Size: sum.Size, FormatVersion: sum.FormatVersion,
		KeystoreVersion: h.KeystoreVersion, ClusterID: strconv.FormatUint(h.ClusterID, 16),
		Node: h.NodeName, Index: h.Index, Term: h.Term, Records: h.Records, Linearizable: h.Linearizable,
		Members: h.Members, TookMS: took.Milliseconds(),
	}
	if !h.LogTime.IsZero() {
		j.LogTime = timePtr(h.LogTime)
	}
	if !h.CreatedAt.IsZero() {
		j.CreatedAt = timePtr(h.CreatedAt)
	}
	return j
}

func (p *printer) snapshotSaved(path, endpoint string, _ *keystorev1.BackupInfo, sum backup.Summary, took time.Duration) error {
	if p.json {
		j := toSnapshotJSON(path, sum, took)
		j.Endpoint = endpoint
		return p.encode(j)
	}
	var f fields
	f.add("saved", path)
	f.add("endpoint", endpoint)
	snapshotFields(&f, sum)
	f.add("took", took.Round(time.Millisecond).String())
	return f.write(p.w)
}

func (p *printer) snapshotStatus(path string, sum backup.Summary, took time.Duration) error {
	if p.json {
		return p.encode(toSnapshotJSON(path, sum, took))
	}
	var f fields
	f.add("file", path)
	f.add("verified", "true (format, header, length and SHA-256)")
	snapshotFields(&f, sum)
	return f.write(p.w)
}

func snapshotFields(f *fields, sum backup.Summary) {
	h := sum.Header
	f.add("size", fmt.Sprintf("%d bytes (%s)", sum.Size, humanBytes(sum.Size)))
	f.add("index", strconv.FormatUint(h.Index, 10))
	f.add("term", strconv.FormatUint(h.Term, 10))
	f.add("records", strconv.FormatUint(h.Records, 10))
	f.add("cluster_id", strconv.FormatUint(h.ClusterID, 16))
	f.add("node", fmt.Sprintf("%s (%x)", h.NodeName, h.NodeID))
	f.add("linearizable", strconv.FormatBool(h.Linearizable))
	f.addTime("log_time", h.LogTime)
	f.addTime("created_at", h.CreatedAt)
	f.add("keystore_version", h.KeystoreVersion)
	f.add("format_version", strconv.FormatUint(uint64(sum.FormatVersion), 10))
	var names []string
	for _, m := range h.Members {
		role := "voter"
		if m.Learner {
			role = "learner"
		}
		names = append(names, fmt.Sprintf("%s (%x, %s)", m.Name, m.ID, role))
	}
	f.add("members", dash(strings.Join(names, ", ")))
}

// humanBytes is n in KiB, MiB or GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 3; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGT"[exp])
}

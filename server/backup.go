package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keystore-dev/keystore/backup"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"github.com/keystore-dev/keystore/storage"
	"github.com/keystore-dev/keystore/version"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Backup and restore (docs/backup.md).
//
// Backup (ClusterService.Backup, admin only) streams a backup file, as
// package backup frames it, of the state machine at one applied index:
//
//  1. unless the request is stale, a ReadIndex round: once it returns, this
//     node has applied everything committed before the call began, so the
//     backup holds every write acknowledged before it (on a follower as on
//     the leader; a Get's linearizable read waits the same way);
//  2. storage's OpenBackup pins one consistent view of the state, at the
//     applied index as it is then (at or after the read index), and the
//     stream is read from it lazily;
//  3. the file goes out in messages of at most backupChunk bytes: memory
//     stays bounded whatever the state's size, gRPC's flow control paces
//     the node, and a cancelled call stops it at the next message.
//
// One backup runs per node at a time: the view pins the state's files
// (they cannot be compacted away), and a second backup would only take the
// same state again.
//
// Restore (keystored restore) makes the data dir of the first node of a new
// cluster from a backup file: a new cluster id and node id, the state at
// the backup's index with a configuration of this node alone (a voter), and
// a log that starts after that index (storage.Store.Restore). The node then
// starts as a single-node cluster, and the others join it.

// backupChunk bounds a Backup message's data.
const backupChunk = 1 << 20

// Backup implements ClusterService.Backup.
func (c clusterService) Backup(req *keystorev1.BackupRequest, stream grpc.ServerStreamingServer[keystorev1.BackupResponse]) error {
	s := c.s
	ctx := stream.Context()
	if !s.backingUp.CompareAndSwap(false, true) {
		return status.Error(codes.ResourceExhausted, "a backup is already under way on this node: wait for it, or back up another node")
	}
	defer s.backingUp.Store(false)
	if !req.GetStale() {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.API.WithDefaults().RequestTimeout)
		err := s.node.ReadIndex(rctx)
		cancel()
		if err != nil {
			return s.backupStatus(ctx, err)
		}
	}
	meta, md, rc, err := s.store.OpenBackup()
	if err != nil {
		return s.backupStatus(ctx, err)
	}
	defer rc.Close()
	h := backup.Header{
		KeystoreVersion: version.Get().String(),
		ClusterID:       s.clusterID,
		NodeID:          s.node.ID(),
		NodeName:        s.cfg.Name,
		Index:           md.Index,
		Term:            md.Term,
		ConfState: backup.ConfState{
			Voters: md.ConfState.Voters, Learners: md.ConfState.Learners,
			VotersOutgoing: md.ConfState.VotersOutgoing, LearnersNext: md.ConfState.LearnersNext,
			AutoLeave: md.ConfState.AutoLeave,
		},
		Records:      meta.GetStoredRecords(),
		CreatedAt:    time.Now().UTC(),
		Linearizable: !req.GetStale(),
		Payload:      backup.PayloadKSS2,
	}
	if lt := meta.GetLogTime(); lt > 0 {
		h.LogTime = time.Unix(0, lt).UTC()
	}
	for _, m := range meta.GetMembers() {
		h.Members = append(h.Members, backup.Member{ID: m.GetId(), Name: m.GetName(), PeerAddress: m.GetPeerAddress(),
			ClientAddress: m.GetClientAddress(), Learner: m.GetLearner()})
	}
	info := &keystorev1.BackupInfo{
		Index: h.Index, Term: h.Term, ClusterId: fmt.Sprintf("%x", h.ClusterID), Node: h.NodeName,
		Records: h.Records, FormatVersion: backup.FormatVersion, Linearizable: h.Linearizable,
	}
	if !h.LogTime.IsZero() {
		info.LogTime = timestamppb.New(h.LogTime)
	}
	cs := &chunkSender{ctx: ctx, stream: stream, info: info, buf: make([]byte, 0, backupChunk)}
	w, err := backup.NewWriter(cs, h)
	if err != nil {
		return s.backupStatus(ctx, err)
	}
	start := time.Now()
	if _, err := io.CopyBuffer(w, rc, make([]byte, 256<<10)); err != nil {
		return s.backupStatus(ctx, err)
	}
	if err := w.Close(); err != nil {
		return s.backupStatus(ctx, err)
	}
	if err := cs.flush(); err != nil {
		return s.backupStatus(ctx, err)
	}
	s.logger.Info("backup sent", "index", h.Index, "term", h.Term, "records", h.Records, "bytes", cs.sent,
		"linearizable", h.Linearizable, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// chunkSender sends what is written to it as BackupResponse messages of
// backupChunk bytes (the last one shorter); the first carries info.
type chunkSender struct {
	ctx    context.Context
	stream grpc.ServerStreamingServer[keystorev1.BackupResponse]
	info   *keystorev1.BackupInfo
	buf    []byte
	sent   int64
}

func (c *chunkSender) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), backupChunk-len(c.buf))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == backupChunk {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// flush sends the buffered bytes, if any (or the info, if not sent yet).
func (c *chunkSender) flush() error {
	if len(c.buf) == 0 && c.info == nil {
		return nil
	}
	if err := c.ctx.Err(); err != nil {
		return err
	}
	// Send encodes the message before it returns: buf may be reused.
	if err := c.stream.Send(&keystorev1.BackupResponse{Data: c.buf, Info: c.info}); err != nil {
		return err
	}
	c.sent += int64(len(c.buf))
	c.buf, c.info = c.buf[:0], nil
	return nil
}

// backupStatus maps an error of a backup to a gRPC status.
func (s *Server) backupStatus(ctx context.Context, err error) error {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return err
	}
	switch {
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, raftnode.ErrStopped), errors.Is(err, storage.ErrClosed):
		return status.Error(codes.Unavailable, "the node is stopping")
	case errors.Is(err, raftnode.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.Unavailable, "no quorum confirmed this node's applied index in time: back up another node, or ask for a stale backup")
	case errors.Is(err, raft.ErrSnapshotTemporarilyUnavailable):
		return status.Error(codes.Unavailable, "nothing applied yet on this node")
	}
	// The cause stays in the node's log, not in the caller's answer.
	s.logger.Error("backup failed", "err", err)
	return status.Error(codes.Internal, "backup failed: see the node's log")
}

// RestoreConfig says where and as whom Restore makes a new cluster's first
// node.
type RestoreConfig struct {
	// DataDir is the node's data dir, which must not exist or be empty.
	DataDir string
	// Name is the node's name: start it with the same --name.
	Name string
	// FS is the filesystem; nil is the operating system's.
	FS vfs.FS
	// Logger receives the store's logs; nil discards them.
	Logger *slog.Logger
}

// RestoreResult is what Restore made.
type RestoreResult struct {
	// Header is the backup's.
	Header backup.Header
	// NodeID and ClusterID are the new node's and cluster's ids.
	NodeID, ClusterID uint64
	// Records is the records the state holds.
	Records uint64
}

// ErrDataDirNotEmpty is returned by Restore into a data dir that holds
// anything.
var ErrDataDirNotEmpty = errors.New("server: the data dir is not empty")

// restoreTemp is where Restore builds the data dir's contents, inside it,
// before moving them into place.
const restoreTemp = ".restore-tmp"

// Restore makes cfg.DataDir the data dir of the first node of a new
// cluster holding the state of the backup r: a new cluster id (the old
// cluster's members refuse its messages, and it theirs) and a new node id,
// the state at the backup's index with this node as the only member, a
// voter, and a log that starts after that index. The backup is checked
// whole (checksums, framing) before anything is installed. Start the node
// with the same data dir and name; others join it (Config.Join).
//
// The contents are built in a temporary directory inside DataDir and moved
// into place at the end, the state first and the identity last. A restore
// that fails before (a damaged backup, a full disk) removes what it made
// and leaves DataDir as it found it; a crash leaves the temporary
// directory, so DataDir is not empty: remove it and restore again.
func Restore(cfg RestoreConfig, r io.Reader) (res *RestoreResult, err error) {
	switch {
	case cfg.DataDir == "":
		return nil, errors.New("server: restore: a data dir is required")
	case cfg.Name == "":
		return nil, errors.New("server: restore: a name is required")
	}
	fs := cfg.FS
	if fs == nil {
		fs = vfs.Default
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	names, err := fs.List(cfg.DataDir)
	existed := err == nil
	switch {
	case existed && len(names) > 0:
		return nil, fmt.Errorf("%w: %s holds %s; restore into a new or empty directory", ErrDataDirNotEmpty, cfg.DataDir, strings.Join(names, ", "))
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	br, err := backup.NewReader(r)
	if err != nil {
		return nil, err
	}
	h := br.Header()
	res = &RestoreResult{Header: h}
	// New ids: the cluster's differs from the old one's, and the node's
	// from every old member's.
	for res.ClusterID == 0 || res.ClusterID == h.ClusterID {
		res.ClusterID = newNodeID()
	}
	old := func(id uint64) bool {
		return slices.ContainsFunc(h.Members, func(m backup.Member) bool { return m.ID == id }) ||
			slices.Contains(h.ConfState.Voters, id) || slices.Contains(h.ConfState.Learners, id)
	}
	for res.NodeID == 0 || old(res.NodeID) {
		res.NodeID = newNodeID()
	}
	if err := fs.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	tmp := filepath.Join(cfg.DataDir, restoreTemp)
	installing := false
	defer func() {
		if err == nil || installing {
			return
		}
		// Nothing is in place yet: leave the data dir as it was found.
		_ = fs.RemoveAll(tmp)
		if !existed {
			_ = fs.Remove(cfg.DataDir)
		}
	}()
	if err := fs.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	store, err := storage.Open(storage.Config{Dir: filepath.Join(tmp, "db"), FS: cfg.FS, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	cs := raftpb.ConfState{Voters: []uint64{res.NodeID}}
	members := []*statev1.Member{{Id: res.NodeID, Name: cfg.Name}}
	err = store.Restore(br, h.Index, h.Term, cs, members)
	if err == nil {
		res.Records = store.StoredRecords()
	} else if errors.Is(err, storage.ErrCorrupt) {
		// The state's own checks failed before the file's checksum
		// was reached: the file is damaged all the same.
		err = fmt.Errorf("%w: %w", backup.ErrCorrupt, err)
	}
	if cerr := store.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("server: restore: %w", cerr)
	}
	if err != nil {
		return nil, err
	}
	id := &identity{NodeID: res.NodeID, ClusterID: res.ClusterID, Name: cfg.Name}
	if err := id.save(fs, tmp); err != nil {
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	installing = true
	// Into place: the state, then the identity (a node without an
	// identity but with state would be taken for one from before
	// identities were kept; without state but with an identity, for a
	// new cluster to bootstrap: the state goes first, so a crash between
	// the two renames leaves a node that cannot elect itself, never an
	// empty cluster that serves).
	if err := fs.Rename(filepath.Join(tmp, "db"), filepath.Join(cfg.DataDir, "db")); err != nil {
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	if err := fs.Rename(filepath.Join(tmp, identityFile), filepath.Join(cfg.DataDir, identityFile)); err != nil {
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	if err := fs.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	if err := syncDir(fs, cfg.DataDir); err != nil {
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	logger.Info("restored a backup as the first node of a new cluster", "index", h.Index, "term", h.Term,
		"records", res.Records, "node_id", fmt.Sprintf("%x", res.NodeID), "cluster_id", fmt.Sprintf("%x", res.ClusterID),
		"backed_up_cluster", fmt.Sprintf("%x", h.ClusterID))
	return res, nil
}

// syncDir syncs a directory's entries.
func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

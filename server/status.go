package server

import (
	"context"
	"time"

	"github.com/keystore-dev/keystore/auth"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/version"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// clusterService answers keystore.v1.ClusterService from this node's view.
type clusterService struct {
	keystorev1.UnimplementedClusterServiceServer
	s *Server
}

// Status implements ClusterService.Status.
func (c clusterService) Status(ctx context.Context, req *keystorev1.StatusRequest) (*keystorev1.StatusResponse, error) {
	// The checksum scans the whole store: an admin's call.
	if req.GetIncludeChecksum() {
		if err := auth.CheckAdmin(ctx); err != nil {
			return nil, err
		}
	}
	st := c.s.node.Status()
	resp := &keystorev1.StatusResponse{
		Name:          c.s.cfg.Name,
		Term:          st.Term,
		CommitIndex:   st.Commit,
		AppliedIndex:  st.Applied,
		StoredRecords: c.s.store.StoredRecords(),
		Serving:       c.s.serving.Load(),
		Version:       version.Get().String(),
		// As applied here: raftnode.Status carries it for metrics too.
		ClusterVersion: st.ClusterVersion,
	}
	if req.GetIncludeChecksum() {
		if sum, applied, err := c.s.store.ChecksumAt(); err == nil {
			resp.StateChecksum, resp.StateAppliedIndex = sum[:], applied
		}
	}
	if lt := c.s.store.LogTime(); lt > 0 {
		resp.LogTime = timestamppb.New(time.Unix(0, lt))
	}
	resp.Members = c.s.memberViews()
	for _, m := range resp.Members {
		if m.GetIsLeader() {
			resp.Leader = m.GetName()
		}
	}
	return resp, nil
}

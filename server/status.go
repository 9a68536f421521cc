package server

import (
	"context"
	"fmt"
	"sort"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// clusterService answers keystore.v1.ClusterService from this node's view.
type clusterService struct {
	keystorev1.UnimplementedClusterServiceServer
	s *Server
}

// Status implements ClusterService.Status.
func (c clusterService) Status(_ context.Context, req *keystorev1.StatusRequest) (*keystorev1.StatusResponse, error) {
	st := c.s.node.Status()
	resp := &keystorev1.StatusResponse{
		Name:          c.s.cfg.Name,
		Term:          st.Term,
		CommitIndex:   st.Commit,
		AppliedIndex:  st.Applied,
		StoredRecords: c.s.store.StoredRecords(),
		Serving:       c.s.serving.Load(),
	}
	if req.GetIncludeChecksum() {
		if sum, applied, err := c.s.store.ChecksumAt(); err == nil {
			resp.StateChecksum, resp.StateAppliedIndex = sum[:], applied
		}
	}
	if lt := c.s.store.LogTime(); lt > 0 {
		resp.LogTime = timestamppb.New(time.Unix(0, lt))
	}
	for name, addr := range c.s.cfg.InitialCluster {
		id := raftnode.IDFromName(name)
		m := &keystorev1.Member{Name: name, Id: fmt.Sprintf("%x", id), PeerAddress: addr, IsLeader: id == st.Leader}
		if m.IsLeader {
			resp.Leader = name
		}
		resp.Members = append(resp.Members, m)
	}
	sort.Slice(resp.Members, func(i, j int) bool { return resp.Members[i].Name < resp.Members[j].Name })
	return resp, nil
}

package server

import (
	"github.com/keystore-dev/keystore/membership"
	"github.com/keystore-dev/keystore/raftnode"
)

// Gossip returns the node's gossip (nil without), for tests that cut a
// node off from gossip or read what it sees.
func (s *Server) Gossip() *membership.Gossip { return s.gossip.g }

// RaftMembers returns the members in the node's Raft configuration.
func (s *Server) RaftMembers() []raftnode.MemberStatus { return s.node.Members() }

// Package membership is the gossip layer of a keystore node, on
// hashicorp/memberlist: it finds the other nodes, carries what each one
// says about itself (node id, name, peer and client addresses, the
// cluster it belongs to, its role) and detects failures.
//
// Gossip advises; Raft decides. Nothing here changes who votes: the
// voting set changes only by Raft configuration changes, proposed by the
// leader one at a time (raftnode). Gossip is used to
//
//   - find a cluster to join (a node started with --join asks the members
//     it finds to add it),
//   - agree on the first members of a new cluster (--bootstrap-expect,
//     see BootstrapSet),
//   - learn a member's new address, so that a node restarted elsewhere
//     keeps its identity (the transport resolves node ids through Lookup),
//   - show which members gossip thinks failed (member list, Status).
//
// A failed member is never removed by gossip: a partition must not shrink
// the quorum. Only an operator removes a voter.
//
// Each node is known to memberlist by its node id (hex), which is created
// once and never reused. What it gossips is node-level: a later version
// that runs many Raft groups on the same nodes keeps this id → address
// map, and each group keeps its own membership in its own log.
//
// Members of another cluster are refused at merge and when they announce
// themselves alive; a node that belongs to no cluster yet (cluster id 0)
// is accepted by any, so that it can join. A shared gossip key (Keys)
// keeps strangers out of the pool altogether.
package membership

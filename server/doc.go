// Package server assembles one keystore node: the Pebble store, the Raft
// node over it, the KeyStoreService, gRPC health and reflection on the
// client address, and the peer service on the peer address. cmd/keystored
// runs it; the in-process cluster tests run three.
//
// # Lifecycle
//
// New opens the store; Start listens and serves; Stop stops serving,
// stops the node, closes the store and waits for every goroutine Start
// started. A listener that fails (its Serve returns while the node is not
// stopping) stops the node by itself, as Stop would; Wait returns once the
// node has stopped, with that failure, or nil after a Stop. keystored runs
// Wait and its signal handling under an errgroup. See Start in server.go
// for the goroutines and how long each lives.
//
// # Identity and membership
//
// A node's identity (Raft id, cluster id, name) is created once and kept in
// its data dir (identity.go); an id is never reused. With an empty data dir
// a node bootstraps the initial cluster, once no member of it says the node
// ran before, or joins an existing cluster (Config.Join): it asks a member
// to add it as a learner under an id it chose, and starts empty to be sent
// the log (membership.go). Once started, each node publishes its name and
// addresses in the log. ClusterService's Member RPCs change membership
// through the Raft node's conf changes. A leader hands leadership over
// before it stops; a node removed from the cluster stops, and Wait returns
// raftnode.ErrRemoved.
//
// # Gossip
//
// With Config.GossipAddr the node also gossips (package membership,
// gossip.go). Gossip advises, Raft decides: it finds the cluster a node
// with an empty data dir joins (Join then lists gossip seeds), agrees on
// the first members of a cluster started with BootstrapExpect, tells the
// transport where a live member is now (peerBook: routes, then gossip,
// then the log), and shows each member's gossip state in the member list.
// It never changes who votes.
//
// # Health
//
// The gRPC health service (the whole server, "", and
// keystore.v1.KeyStoreService) reports SERVING only while the node can
// answer for the cluster: its storage works, it knows a leader, and it has
// applied what the leader had committed a moment ago. The node learns the
// leader's commit index by a ReadIndex round, at most one a second (raft
// tells a follower commit indexes only up to what it has matched, so a
// follower restarted far behind would otherwise believe itself caught up).
// A node becomes SERVING when a round returns within 1 s, stays SERVING
// while every round returns within 2 s, and is NOT_SERVING at once after a
// storage failure, without a leader, or when it is more than 1,000 entries
// behind the commit index it knows (as while it installs a snapshot). Load
// balancers and clients should route to SERVING nodes only; Stop reports
// NOT_SERVING first. See healthLoop in server.go.
package server

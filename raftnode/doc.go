// Package raftnode drives one member of keystore's Raft group
// (go.etcd.io/raft/v3). raft.RawNode sits behind a mutex: proposers and
// peer connections step it directly, and Readies are handled one at a time, by
// whichever goroutine pumps (a proposer, the ticker, the run loop woken by a
// peer connection), in the order persist → send → apply → Advance (a leader
// sends first). Concurrent proposals on different records are packed into one
// entry, and a round's entries go to raft in one step; the peer sender merges
// appends that continue one another and holds a commit-only append briefly
// for the next append to carry. The package talks to
// the rest of the server through narrow seams: LogStore and StateMachine
// (implemented by storage), Propose and ReadIndex (used by the API), the
// peer gRPC service (PeerServer, for Forward) and SplitPeerListener, which
// takes raft's own plain-TCP connections off the peer port. It never
// imports the store or the API.
//
// Snapshots travel beside raft: MsgSnap carries only metadata, and the
// state is streamed on a connection of its own from the store's consistent
// view (SnapshotStore.OpenSnapshot) into the follower's staging area
// (ReceiveSnapshot) before raft sees the message (snapshot.go).
//
// The traffic to peers goes through Transport (transport.go): the TCP
// transport in production (tcp.go, rawpeer.go, snapshot.go), InmemNetwork's
// in tests, which can partition, delay and drop.
//
// Membership changes at runtime through conf changes, one at a time: a
// node joins as a learner and is promoted once caught up; a change that
// would leave no working quorum is refused; removing the leader hands
// leadership over first (membership.go).
//
// Entries are in package entry's format (an envelope with the leader's log
// time and one request id or several packed proposals); entry also holds
// the packing rules and routes each apply result to its proposer. Commands
// are opaque here: raftnode never decodes one, and knows nothing of the
// contract's rules. See DESIGN.md.
package raftnode

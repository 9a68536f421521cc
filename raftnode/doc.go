// Package raftnode drives one member of keystore's Raft group
// (go.etcd.io/raft/v3). A single goroutine owns raft.Node and handles each
// Ready in the order persist → send → apply → Advance. The package talks to
// the rest of the server through narrow seams: LogStore and StateMachine
// (implemented by storage), Propose and ReadIndex (used by the API), and the
// peer gRPC service (PeerServer). It never imports the store or the API.
//
// Entries carry an envelope (statev1.Entry) with a request id and the
// leader's clock; payloads are opaque here. See DESIGN.md.
package raftnode

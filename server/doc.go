// Package server assembles one keystore node: the Pebble store, the Raft
// node over it, the KeyStoreService, gRPC health and reflection on the
// client address, and the peer service on the peer address. cmd/keystored
// runs it; the in-process cluster tests run three.
package server

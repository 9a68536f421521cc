// Package api implements keystore.v1.KeyStoreService: request validation
// (INVALID_ARGUMENT with BadRequest field violations), commands proposed
// through a Replicator, linearizable reads through ReadIndex, and the one
// mapping from internal errors to gRPC status codes (errors.go).
package api

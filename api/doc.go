// Package api implements keystore.v1.KeyStoreService: request validation
// (INVALID_ARGUMENT with BadRequest field violations), commands proposed
// through a Replicator, linearizable reads through ReadIndex, and the one
// mapping from internal errors to gRPC status codes (errors.go). On the
// leader, a Claim that would change nothing (a retry of a completed or held
// key) is answered by a ReadIndex round instead of a log write
// (claimByRead). NewBatchService serves keystore.v1.BatchService over the
// same service: each operation of a batch is one call of the matching
// method, run concurrently with the others. Its Stream (stream.go) runs the
// same operations as they arrive on a long-lived stream and sends each
// result as soon as it is ready, several to a message when they finish
// together (a sender with other operations in flight yields first, so that
// the workers of one applied batch join its message).
package api

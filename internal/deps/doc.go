// Package deps has no code: its test enforces the layering of keystore's
// packages (storage knows nothing of gRPC or Raft's driver, the Raft driver
// knows nothing of the store or the API, and only cmd/ and server wire them).
package deps

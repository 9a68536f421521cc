// Package deps has no code: its test enforces the layering of keystore's
// packages (storage knows nothing of gRPC or Raft's driver, the Raft driver
// knows nothing of the store, the contract's rules or the API, the entry
// format and the rules depend on none of them, and only cmd/ and server
// wire them).
package deps

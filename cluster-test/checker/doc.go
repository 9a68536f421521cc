// Package checker judges a fault run's history (package history) against
// docs/contract.md.
//
// Check does two things. It checks each key's operations for
// linearizability with porcupine against a model of one record (model.go),
// the rules of storage/apply.go over a state the model only partly knows:
// log times are learnt from the outputs that reveal them, and where an
// output reveals nothing the model keeps every possibility. And it counts
// direct violations of the contract's promises over the whole history
// (invariants.go): two live holders of one key, an acknowledged completion
// lost or replayed differently, a linearizable read that misses an
// acknowledged completion, a stale read showing a state that never was.
//
// # Ghosts
//
// A write may apply more than once: the Raft driver proposes again with the
// same request id when the leader changes under it, and an indeterminate
// write may apply at any later moment or never. The model treats every
// write as a ghost source from its call on: before any step, one pending
// ghost of each stage (heartbeat; release or complete; claim) may fire with
// an unknown log time. This covers indeterminate writes (no porcupine op
// with an open end is needed, which keeps the search from exploding) and
// duplicate applications of determinate ones, whose observed answer may
// come from either application. Ghosts make the model less sharp, never
// unsound: see the NB comments in ghost.go.
//
// # Keeping the search small
//
// Porcupine explores orders of concurrent operations; a model that accepts
// an operation too early sends it down a path whose dead end it finds only
// after every order of the operations in between. Two things keep that in
// check. The model prunes states another state covers (linearize.go,
// covers), so chains of ghosts do not multiply states. And it uses that
// tokens are log indexes: every output showing token X as current is
// linearized before any larger token is revealed (linearize.go, readers),
// which rejects a grant placed before the reads of older tokens at once.
// One key with 20 concurrent clients and 1,200 operations checks in
// seconds; far more concurrency on one key may end Unknown.
//
// # Hidden tokens
//
// The contract shows the token of a live claim to its holder only: an
// IN_PROGRESS answer to Claim and a Get of an IN_PROGRESS record carry
// token 0, which the checker reads as unknown (hidden.go). Such a record
// still shows its generation (created_at, then attempt), which orders it
// among the key's records as its token would. When another output shows
// the token of that generation, the hidden token is that one, and the
// output is judged as if it showed it; otherwise the token is bounded by
// those of earlier and later generations, which keeps the token-order
// pruning above. Only what the contract promises is used, so a legal
// history is never rejected; some sharpness is lost where no output shows
// a token at all (a claim whose ACQUIRED answer was lost).
//
// Log time and the test's wall clock are different clocks and are never
// compared. Wall-clock intervals only order operations (one returned before
// another was called).
package checker

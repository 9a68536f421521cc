// Package expiry drives TTL expiry. On the Raft leader a Sweeper proposes
// Expire entries through the log — on an interval, and as soon as the expiry
// index says a record is due — so that every replica deletes the same
// records at the same log position. Each entry deletes a bounded batch; a
// sweep that finds more due proposes the next batch at once.
package expiry

package raftnode

import (
	"sync"
	"time"
)

// logClock decides the time the leader stamps into each entry.
//
// Log time must never move backwards and must never run ahead of real time,
// whatever a leader's wall clock says: a leader whose clock is ten minutes
// fast must not expire ten minutes of leases early. So after the first entry
// of a brand-new cluster (stamped with the wall clock), log time advances only
// by monotonic elapsed time:
//
//   - every node notes the latest log time it applied and when (on its
//     monotonic clock);
//   - a node that becomes leader anchors at that log time plus the monotonic
//     time since it applied it, which never overestimates: the entry was
//     stamped before it was applied here;
//   - while it leads, it stamps anchor + monotonic time since anchoring;
//   - whenever it learns of a log time past its own (a snapshot installed,
//     an entry of an earlier term stamped ahead), it goes on from that time
//     (a leader re-anchors there): taking only the maximum would freeze log
//     time at it until the old estimate caught up, for as long as the jump
//     (a node that applied 1,000 s, then installed a snapshot at 10,000 s,
//     led with log time stuck at 10,000 s for 9,000 s).
//
// It learns log time from every entry the node applies and from every
// snapshot it installs (observe, called by the Ready handler): those are
// the only ways the state machine's log time moves, so the clock never
// stamps below it. NB: a new way of changing the state machine's log time
// must observe it too.
//
// Time the whole cluster spends down does not count (as with etcd's leases):
// after a full restart, log time resumes where it stopped, so records and
// leases keep the real time they had left.
type logClock struct {
	mu   sync.Mutex
	wall func() time.Time // the wall clock, used only for the very first stamp
	mono func() time.Time // a clock whose differences are trusted

	applied   int64     // largest log time applied here
	appliedAt time.Time // mono reading when it was applied

	leading    bool
	anchor     int64     // log time when this node started leading
	anchoredAt time.Time // mono reading then
}

// newLogClock returns a clock that starts from applied, the state
// machine's log time.
func newLogClock(wall, mono func() time.Time, applied int64) *logClock {
	return &logClock{wall: wall, mono: mono, applied: applied, appliedAt: mono()}
}

// observe records the time of an applied entry, or the log time of an
// installed snapshot.
func (c *logClock) observe(t int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t <= c.applied {
		return
	}
	now := c.mono()
	c.applied, c.appliedAt = t, now
	if c.leading && t > c.anchor+int64(now.Sub(c.anchoredAt)) {
		// Past this leader's own time: go on from it, rather than stamp
		// this maximum until the anchor catches up.
		c.anchor, c.anchoredAt = t, now
	}
}

// setLeading anchors the clock when this node becomes leader, and drops the
// anchor when it stops.
func (c *logClock) setLeading(leading bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if leading == c.leading {
		return
	}
	c.leading = leading
	if leading {
		c.anchor, c.anchoredAt = c.estimateLocked(), c.mono()
	}
}

// stamp returns the time for a new entry proposed by this node.
func (c *logClock) stamp() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applied == 0 && c.anchor == 0 {
		return c.wall().UnixNano() // a new cluster: seed log time
	}
	if !c.leading {
		return c.estimateLocked()
	}
	return max(c.anchor+int64(c.mono().Sub(c.anchoredAt)), c.applied)
}

// now estimates the current log time on any node, for timers that wait for
// a log time (a lease end) to pass.
func (c *logClock) now() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leading {
		return max(c.anchor+int64(c.mono().Sub(c.anchoredAt)), c.applied)
	}
	return c.estimateLocked()
}

func (c *logClock) estimateLocked() int64 {
	if c.applied == 0 {
		return c.wall().UnixNano()
	}
	return c.applied + int64(c.mono().Sub(c.appliedAt))
}

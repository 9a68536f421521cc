package raftnode

import (
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
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
// It learns log time from the entries the node applies (observe) and from
// the state machine's own log time (logTime), read at every stamp: what
// installed a snapshot, or applied anything, need not tell the clock for it
// never to stamp below the state machine.
//
// Time the whole cluster spends down does not count (as with etcd's leases):
// after a full restart, log time resumes where it stopped, so records and
// leases keep the real time they had left.
type logClock struct {
	mu      sync.Mutex
	wall    func() time.Time // the wall clock, used only for the very first stamp
	mono    func() time.Time // a clock whose differences are trusted
	logTime func() int64     // the state machine's log time; called without mu

	applied   int64     // largest log time applied here
	appliedAt time.Time // mono reading when it was applied

	leading    bool
	anchor     int64     // log time when this node started leading
	anchoredAt time.Time // mono reading then
}

// newLogClock returns a clock that starts from logTime(), the state
// machine's log time, and never goes below it.
func newLogClock(wall, mono func() time.Time, logTime func() int64) *logClock {
	return &logClock{wall: wall, mono: mono, logTime: logTime, applied: logTime(), appliedAt: mono()}
}

// observe records the time of an applied entry, or the log time of an
// installed snapshot.
func (c *logClock) observe(t int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.observeLocked(t)
}

func (c *logClock) observeLocked(t int64) {
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

// lock takes mu, having observed the state machine's log time.
func (c *logClock) lock() {
	t := c.logTime() // it takes the state machine's lock: not under mu
	c.mu.Lock()
	c.observeLocked(t)
}

// setLeading anchors the clock when this node becomes leader, and drops the
// anchor when it stops.
func (c *logClock) setLeading(leading bool) {
	c.lock()
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
	c.lock()
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
	c.lock()
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

// envelopeHeader reads the request id and time of an entry's envelope
// (statev1.Entry fields 1 and 2) without decoding the command.
func envelopeHeader(data []byte) (requestID uint64, t int64, ok bool) {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return 0, 0, false
		}
		data = data[n:]
		if typ == protowire.VarintType && (num == 1 || num == 2) {
			v, m := protowire.ConsumeVarint(data)
			if m < 0 {
				return 0, 0, false
			}
			if num == 1 {
				requestID = v
			} else {
				t = int64(v)
			}
			data = data[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, data)
		if m < 0 {
			return 0, 0, false
		}
		data = data[m:]
	}
	return requestID, t, true
}

package harness

import (
	"context"
	"math/rand"
	"sync"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// Fault kinds.
const (
	FaultKill       = "kill"        // SIGKILL a node, restart it later
	FaultKillLeader = "kill-leader" // SIGKILL the leader, restart it later
	FaultKillAll    = "kill-all"    // SIGKILL every node at once, restart them
	FaultPause      = "pause"       // SIGSTOP a node, SIGCONT it later
	FaultIsolate    = "isolate"     // cut every link of a node
	FaultOneWay     = "one-way"     // cut one direction of one link
	FaultSlow       = "slow"        // delay with jitter on a node's links
	FaultReset      = "reset"       // close every connection of a node's links
	FaultClock      = "clock"       // skew a node's wall clock by minutes to an hour
	// Membership changes (membership.go), one at a time and only while no
	// node is killed or paused:
	FaultReplace      = "replace"       // SIGKILL a node, remove it, wipe its data, rejoin it (--join, new id)
	FaultRemoveRejoin = "remove-rejoin" // remove a live node, let it exit, wipe its data, rejoin it
)

// FaultKinds are the kinds of fault inject knows.
var FaultKinds = []string{FaultKill, FaultKillLeader, FaultKillAll, FaultPause, FaultIsolate, FaultOneWay, FaultSlow,
	FaultReset, FaultClock, FaultReplace, FaultRemoveRejoin}

// Fault is one injected fault and when it was in force.
type Fault struct {
	Kind  string
	Nodes []string
	Start time.Time
	End   time.Time
	// Recovery is how long until a Claim first succeeded again (0 when it
	// did not within the probe's limit, or is not measured for the kind):
	// kill and kill-leader from the kill, through the live nodes; kill-all
	// from the restart of all three; isolate and pause from the heal,
	// through the node that was cut off or paused; replace from the kill,
	// through the others; remove-rejoin from the removal request, through
	// the others.
	Recovery time.Duration
	// Rejoin is, for replace and remove-rejoin, how long after the wiped
	// node was started with --join it was listed as a voter again (0 when
	// it did not rejoin, or was not a voter within the limit).
	Rejoin time.Duration
	// CaughtUp is, for replace and remove-rejoin, how long after the
	// wiped node was started with --join it served (it knew the leader
	// and had applied up to its commit index; 0 when it did not within
	// the limit). The fault ends only then, as an operator replacing a
	// node waits for it to be healthy before touching the next one.
	CaughtUp time.Duration
	// Note says, for people, what a membership fault did: the node's role
	// and ids, how long each step took, and any step that did not go as
	// planned (e.g. a node that could not be removed was restarted with
	// its data instead).
	Note string
}

// schedule orders the faults of concurrent streams.
type schedule struct {
	// nodeMu serialises faults on the process table so that two streams
	// never kill and restart one node at the same moment.
	nodeMu sync.Mutex
	// down is held shared while a fault keeps a node down (kill,
	// kill-leader, kill-all, pause) and exclusively by a membership
	// change (replace, remove-rejoin): one membership change at a time,
	// never while another node is down, so that it never has to
	// remove a voter from a cluster that has lost one already. Network
	// faults and clock skew may still overlap a membership change: a
	// removal the leader cannot make safely then is refused, and
	// changeMembership retries it for a while. Taken before nodeMu,
	// never inside it.
	down sync.RWMutex
}

// Nemesis configures the fault schedule of a run: Streams independent
// streams of faults, so faults overlap.
type Nemesis struct {
	Streams int
	// Gap bounds the pause between two faults of one stream.
	MinGap, MaxGap time.Duration
	// Kinds to draw from (default: all).
	Kinds []string
	Seed  int64
}

// RunNemesis injects faults until ctx ends, then heals everything. It
// returns the faults in the order they ended (a membership change may
// outlast several faults of the other stream).
func RunNemesis(ctx context.Context, c *Cluster, n Nemesis) []Fault {
	if n.Streams == 0 {
		n.Streams = 2
	}
	if n.MinGap == 0 {
		n.MinGap, n.MaxGap = time.Second, 3*time.Second
	}
	if len(n.Kinds) == 0 {
		n.Kinds = []string{FaultKill, FaultKillLeader, FaultPause, FaultIsolate, FaultOneWay, FaultSlow, FaultReset, FaultClock, FaultKill, FaultIsolate, FaultKillAll, FaultReplace, FaultRemoveRejoin}
	}
	var (
		mu     sync.Mutex
		faults []Fault
		wg     sync.WaitGroup
		sched  schedule
	)
	for s := 0; s < n.Streams; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(n.Seed*7919 + int64(s)))
			for {
				gap := n.MinGap + time.Duration(rng.Int63n(int64(n.MaxGap-n.MinGap)+1))
				select {
				case <-ctx.Done():
					return
				case <-time.After(gap):
				}
				kind := n.Kinds[rng.Intn(len(n.Kinds))]
				f, ok := inject(ctx, c, kind, rng, &sched)
				if !ok {
					continue // the run ended while it waited for its turn
				}
				mu.Lock()
				faults = append(faults, f)
				mu.Unlock()
			}
		}(s)
	}
	wg.Wait()
	return faults
}

// inject applies one fault, holds it for a while, and undoes it. It
// returns false, having done nothing, when the run ended while the fault
// waited for its turn (see schedule).
func inject(ctx context.Context, c *Cluster, kind string, rng *rand.Rand, sched *schedule) (Fault, bool) {
	hold := time.Second + time.Duration(rng.Int63n(int64(2*time.Second)))
	node := c.Names[rng.Intn(len(c.Names))]
	nodeMu := &sched.nodeMu
	switch kind {
	case FaultKill, FaultKillLeader, FaultKillAll, FaultPause:
		sched.down.RLock()
		defer sched.down.RUnlock()
	case FaultReplace, FaultRemoveRejoin:
		sched.down.Lock()
		defer sched.down.Unlock()
	}
	if ctx.Err() != nil {
		return Fault{}, false
	}
	f := Fault{Kind: kind, Start: time.Now(), Nodes: []string{node}}
	wait := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	switch kind {
	case FaultReplace, FaultRemoveRejoin:
		changeMembership(ctx, c, &f, nodeMu)
	case FaultKill, FaultKillLeader:
		if kind == FaultKillLeader {
			if l := c.Leader(ctx); l != "" {
				node = l
				f.Nodes = []string{l}
			}
		}
		nodeMu.Lock()
		c.Kill(node)
		nodeMu.Unlock()
		// The node stays down until the others served a Claim (up to
		// 10 s) and at least for hold: a slow recovery is measured, not
		// cut short by the restart.
		f.Recovery = probeRecovery(ctx, c, others(c.Names, node), f.Start, 10*time.Second)
		wait(hold - time.Since(f.Start))
		nodeMu.Lock()
		_ = c.StartNode(node)
		nodeMu.Unlock()
	case FaultKillAll:
		f.Nodes = c.Names
		nodeMu.Lock()
		for _, m := range c.Names {
			c.Kill(m)
		}
		wait(500 * time.Millisecond)
		for _, m := range c.Names {
			_ = c.StartNode(m)
		}
		restarted := time.Now()
		nodeMu.Unlock()
		f.Recovery = probeRecovery(ctx, c, c.Names, restarted, 15*time.Second)
	case FaultPause:
		nodeMu.Lock()
		c.Pause(node)
		nodeMu.Unlock()
		wait(hold)
		nodeMu.Lock()
		c.Resume(node)
		nodeMu.Unlock()
		f.Recovery = probeRecovery(ctx, c, []string{node}, time.Now(), 10*time.Second)
	case FaultIsolate:
		c.Isolate(node)
		wait(hold)
		for _, m := range c.Names {
			if m != node {
				c.Link(node, m).Pass()
				c.Link(m, node).Pass()
			}
		}
		f.Recovery = probeRecovery(ctx, c, []string{node}, time.Now(), 10*time.Second)
	case FaultOneWay:
		other := c.Names[(indexOf(c.Names, node)+1+rng.Intn(len(c.Names)-1))%len(c.Names)]
		f.Nodes = []string{node, other}
		c.Link(node, other).Drop()
		wait(hold)
		c.Link(node, other).Pass()
	case FaultSlow:
		for _, m := range c.Names {
			if m != node {
				c.Link(node, m).Delay(20*time.Millisecond, 80*time.Millisecond)
				c.Link(m, node).Delay(20*time.Millisecond, 80*time.Millisecond)
			}
		}
		wait(hold)
		for _, m := range c.Names {
			if m != node {
				c.Link(node, m).Pass()
				c.Link(m, node).Pass()
			}
		}
	case FaultClock:
		// Ahead or behind by a minute to an hour: log time must not care.
		skew := time.Minute + time.Duration(rng.Int63n(int64(time.Hour)))
		if rng.Intn(2) == 0 {
			skew = -skew
		}
		_ = c.SetClockOffset(node, skew)
		wait(hold)
		_ = c.SetClockOffset(node, 0)
	case FaultReset:
		for _, m := range c.Names {
			if m != node {
				c.Link(node, m).Reset()
				c.Link(m, node).Reset()
			}
		}
	}
	f.End = time.Now()
	return f, true
}

// probeRecovery claims fresh keys through nodes until one succeeds, and
// returns how long after start that was (0 if it did not within limit).
func probeRecovery(ctx context.Context, c *Cluster, nodes []string, start time.Time, limit time.Duration) time.Duration {
	deadline := time.Now().Add(limit)
	for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
		for _, n := range nodes {
			actx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			_, err := c.KV(n).Claim(actx, &keystorev1.ClaimRequest{Namespace: "probe", Key: time.Now().Format(time.RFC3339Nano)})
			cancel()
			if err == nil {
				return time.Since(start)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0
}

func others(names []string, n string) []string {
	var out []string
	for _, m := range names {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

func indexOf(names []string, n string) int {
	for i, m := range names {
		if m == n {
			return i
		}
	}
	return 0
}

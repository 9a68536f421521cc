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
)

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
	// through the node that was cut off or paused.
	Recovery time.Duration
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
// returns the faults in the order they started.
func RunNemesis(ctx context.Context, c *Cluster, n Nemesis) []Fault {
	if n.Streams == 0 {
		n.Streams = 2
	}
	if n.MinGap == 0 {
		n.MinGap, n.MaxGap = time.Second, 3*time.Second
	}
	if len(n.Kinds) == 0 {
		n.Kinds = []string{FaultKill, FaultKillLeader, FaultPause, FaultIsolate, FaultOneWay, FaultSlow, FaultReset, FaultClock, FaultKill, FaultIsolate, FaultKillAll}
	}
	var (
		mu     sync.Mutex
		faults []Fault
		wg     sync.WaitGroup
		// nodeMu serialises faults on the process table so that two
		// streams never kill and restart one node at the same moment.
		nodeMu sync.Mutex
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
				f := inject(ctx, c, kind, rng, &nodeMu)
				mu.Lock()
				faults = append(faults, f)
				mu.Unlock()
			}
		}(s)
	}
	wg.Wait()
	return faults
}

// inject applies one fault, holds it for a while, and undoes it.
func inject(ctx context.Context, c *Cluster, kind string, rng *rand.Rand, nodeMu *sync.Mutex) Fault {
	hold := time.Second + time.Duration(rng.Int63n(int64(2*time.Second)))
	node := c.Names[rng.Intn(len(c.Names))]
	f := Fault{Kind: kind, Start: time.Now(), Nodes: []string{node}}
	wait := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	switch kind {
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
	return f
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

package api

import (
	"sync"
	"testing"
	"time"
)

// TestWorkersRunConcurrently: run never waits for a busy worker, so
// functions that wait for each other (as a batch's operations may, through
// the packer) all run at once.
func TestWorkersRunConcurrently(t *testing.T) {
	w := newWorkers()
	for round := range 3 { // later rounds reuse idle workers
		const n = 100
		var started, done sync.WaitGroup
		started.Add(n)
		done.Add(n)
		release := make(chan struct{})
		for range n {
			w.run(func() {
				defer done.Done()
				started.Done()
				<-release
			})
		}
		ok := make(chan struct{})
		go func() { started.Wait(); close(ok) }()
		select {
		case <-ok:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: not all %d functions started while the first ones block", round, n)
		}
		close(release)
		done.Wait()
	}
}

package api

import "time"

// workers runs functions on long-lived goroutines. A fresh goroutine per
// batch operation starts with a small stack and grows it, by copying, as
// the operation descends into replication and raft, a visible cost on a
// loaded leader (docs/performance-notes.md); a worker grows it once. A function goes to an
// idle worker, or to a new one if none is idle; a worker idle for
// workerIdle exits.
type workers struct {
	work chan func()
}

const workerIdle = 10 * time.Second

func newWorkers() *workers { return &workers{work: make(chan func())} }

// run runs f on a worker; it does not wait for f.
func (w *workers) run(f func()) {
	select {
	case w.work <- f:
	default:
		go w.loop(f)
	}
}

func (w *workers) loop(f func()) {
	f()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		select {
		case f := <-w.work:
			f()
			idle.Reset(workerIdle)
		case <-idle.C:
			return
		}
	}
}

package clustertest

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/keystore-dev/keystore/cluster-test/checker"
	"github.com/keystore-dev/keystore/cluster-test/history"
)

// checkTimeout bounds porcupine's search over one run's history. A key
// whose search runs out of time is Unknown, which fails the run: a verdict
// the checker could not reach is not a pass.
const checkTimeout = 2 * time.Minute

// checkHistory returns the violations the checkers find in ops, one line
// each, and the report they came from.
func checkHistory(ops []history.Op) ([]string, checker.Report) {
	rep := checker.Check(ops, checkTimeout)
	var out []string
	for _, k := range rep.FailingKeys() {
		if v, ok := rep.Keys[k]; ok && v != checker.Ok {
			out = append(out, fmt.Sprintf("linearizability: key %q: %s", k, v))
		}
	}
	for _, c := range []struct {
		name string
		fs   []checker.Finding
	}{
		{"double acquire", rep.DoubleAcquire},
		{"lost completion", rep.LostCompletion},
		{"replay mismatch", rep.ReplayMismatch},
		{"stale read", rep.StaleRead},
		{"stale phantom", rep.StalePhantom},
	} {
		for _, f := range c.fs {
			out = append(out, c.name+": "+f.String())
		}
	}
	return out, rep
}

// saveVisualization writes porcupine's visualization of the failing keys
// of ops into dir.
func saveVisualization(dir string, ops []history.Op, rep checker.Report) error {
	keys := rep.FailingKeys()
	if len(keys) == 0 {
		return nil
	}
	return checker.SaveVisualization(filepath.Join(dir, "visualization.html"), ops, keys, checkTimeout)
}

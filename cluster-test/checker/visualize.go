package checker

import (
	"math"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/keystore-dev/keystore/cluster-test/history"
)

// SaveVisualization writes to path porcupine's HTML visualization of the
// given keys of ops (typically Report.FailingKeys()), one partition per
// key, searching again within timeout (zero or less: no limit). Ops the
// model does not linearize (indeterminate writes, stale and failed Gets)
// appear as annotations in their client's row, and the findings of the
// direct checks as annotations in a "checker" row.
func SaveVisualization(path string, ops []history.Op, keys []string, timeout time.Duration) error {
	h := index(append([]history.Op(nil), ops...))
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	var parts [][]porcupine.Operation
	var all []porcupine.Operation
	var annotations []porcupine.Annotation
	end := int64(math.MinInt64)
	for _, op := range h.ops {
		end = max(end, op.Return)
	}
	for _, k := range h.keys {
		if !want[k.key] {
			continue
		}
		p := operations(k)
		parts = append(parts, p)
		all = append(all, p...)
		for _, op := range k.all {
			c := h.class[op]
			if c == classLinear {
				continue
			}
			a := porcupine.Annotation{
				ClientId:    max(op.Client, 0),
				Start:       op.Call,
				End:         op.Return,
				Description: describeOp(op, h.base),
				Details:     "key " + k.key + ": not linearized (stale or failed read)",
			}
			if c == classIndeterminate {
				a.End = end
				a.Details = "key " + k.key + ": indeterminate write, modelled as a ghost that may apply from its call on"
				a.BackgroundColor = "#fde68a"
			}
			annotations = append(annotations, a)
		}
	}

	// Partition by the grouping just built: porcupine numbers partitions
	// in the order the function returns them.
	model := newModel(h.base)
	model.Partition = func([]porcupine.Operation) [][]porcupine.Operation { return parts }
	_, info := porcupine.CheckOperationsVerbose(model, all, max(timeout, 0))

	inv := newInvariants(h)
	lost, stale := inv.lostCompletions()
	byID := map[int]*history.Op{}
	for _, op := range h.ops {
		byID[op.ID] = op
	}
	for _, fs := range [][]Finding{inv.doubleAcquire(), lost, stale, inv.replayMismatches(), inv.stalePhantoms()} {
		for _, f := range fs {
			op := byID[f.OpIDs[0]]
			if !want[f.Key] || op == nil {
				continue
			}
			annotations = append(annotations, porcupine.Annotation{
				Tag:             "checker",
				Start:           op.Call,
				End:             op.Return,
				Description:     f.Detail,
				Details:         f.String(),
				BackgroundColor: "#fecaca",
			})
		}
	}
	info.AddAnnotations(annotations)
	return porcupine.VisualizePath(model, info, path)
}

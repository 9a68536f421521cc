package storage

import (
	"bytes"
	"container/heap"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"google.golang.org/protobuf/proto"
)

// applyBatch is the batch one Apply writes. It reads its own writes, so
// several commands on one key in a batch see each other and the result does
// not depend on how entries were grouped into batches.
//
// The Pebble batch is a plain one, written and never read: what the batch
// wrote so far is kept beside it in memory, and reads look there first and
// in the database (as it was before the batch) otherwise. For records, a
// map of the records written. For the expiry index, which a sweep scans in
// order: the index keys written or removed, a heap of those set, and how
// far the sweeps so far have emptied the index (see indexIter). Why not an
// indexed batch, which Pebble reads through: it keeps a skiplist of every
// write (costly under load), and each Get on one that holds range deletions
// (a sweep's) fragments all of them anew, so applying a batch of many
// entries with sweeps among them cost entries × sweeps (DESIGN.md, Apply).
type applyBatch struct {
	b  *pebble.Batch
	db *pebble.DB
	// records are the records written so far; a nil record: deleted.
	records map[string]*statev1.Record
	// index holds the expiry index keys written so far: true if set, false
	// if removed (a SingleDelete, or swept by a range deletion). Nil when
	// no scan of the index is to come (see noMoreScans).
	index map[string]bool
	// added holds every index key set so far (index[k] true), and possibly
	// some that were removed since, in key order.
	added keyHeap
	// dbFrom: every index key of the database below it is gone as of the
	// batch: swept (by the batch's range deletions) or removed by the
	// batch and passed by a sweep. The database part of a scan starts
	// there, which both hides what the range deletions removed and spares
	// each sweep the keys an earlier one passed. Nil: the index's start.
	dbFrom []byte
	// fs tells keys that certainly have no record (no lookup then), and
	// learns every key a record is created at.
	fs filters
	// usage is how the batch moves each namespace's Usage, applied to the
	// store's table once it has committed; nil when the store does not
	// count usage.
	usage map[string]Usage
}

// newApplyBatch returns an empty batch. scans says whether the index will
// be scanned (the entries hold an Expire): only then does the batch keep
// its index writes in memory.
func newApplyBatch(db *pebble.DB, scans bool, fs filters) *applyBatch {
	a := &applyBatch{b: db.NewBatch(), db: db, records: make(map[string]*statev1.Record), fs: fs}
	if scans {
		a.index = make(map[string]bool)
	}
	return a
}

func (a *applyBatch) Close() { _ = a.b.Close() }

// getRecord returns the record at k as of the writes so far; nil if absent.
func (a *applyBatch) getRecord(k []byte) (*statev1.Record, error) {
	if rec, ok := a.records[string(k)]; ok {
		return rec, nil
	}
	// A record this batch created was added to the filter as it was.
	if a.fs.absent(k) {
		return nil, nil
	}
	v, closer, err := a.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	rec := &statev1.Record{}
	if err := proto.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return rec, nil
}

func (a *applyBatch) setRecord(k []byte, rec *statev1.Record) error {
	a.records[string(k)] = rec
	return a.b.Set(k, mustMarshal(rec), nil)
}

func (a *applyBatch) deleteRecord(k []byte) error {
	a.records[string(k)] = nil
	return a.b.Delete(k, nil)
}

// setIndex sets the expiry index key k.
func (a *applyBatch) setIndex(k []byte) error {
	if a.index != nil {
		ks := string(k)
		a.index[ks] = true
		heap.Push(&a.added, ks)
	}
	return a.b.Set(k, nil, nil)
}

// singleDeleteIndex removes the expiry index key k, set once since it was
// last removed (see putRecord).
func (a *applyBatch) singleDeleteIndex(k []byte) error {
	if a.index != nil {
		a.index[string(k)] = false
	}
	return a.b.SingleDelete(k, nil)
}

// sweptIndex removes the index keys up to and including last, which a
// scan (indexIter) has just passed: one range deletion.
func (a *applyBatch) sweptIndex(last []byte) error {
	return a.b.DeleteRange(expiryStart, append(last, 0), nil)
}

// noMoreScans tells the batch that no scan of the index follows: it stops
// keeping the index writes in memory.
func (a *applyBatch) noMoreScans() { a.index, a.added = nil, nil }

// indexIter scans the expiry index from its start up to an upper bound as
// of the batch's writes: the database's keys from dbFrom on, less those the
// batch wrote, merged with the keys the batch set (from its heap). Each
// key it yields is taken to be swept: the caller range-deletes up to the
// last one (sweptIndex). Once it is closed, dbFrom moves to the first
// database key it did not pass, so a later scan of the same batch starts
// there.
type indexIter struct {
	a     *applyBatch
	it    *pebble.Iterator // nil: no database keys in range
	upper []byte
	dbKey []byte // the database's current key; nil: none left
	key   []byte // the current key; nil: none left
	fromB bool   // key is the heap's top
}

// scanIndex opens an indexIter over the index keys below upper, positioned
// at the first. Only a batch made with scans, before noMoreScans.
func (a *applyBatch) scanIndex(upper []byte) (*indexIter, error) {
	if a.index == nil {
		return nil, errors.New("storage: a scan of the expiry index in a batch that did not keep its index writes")
	}
	x := &indexIter{a: a, upper: upper}
	lower := expiryStart
	if bytes.Compare(a.dbFrom, lower) > 0 {
		lower = a.dbFrom
	}
	if bytes.Compare(lower, upper) < 0 {
		it, err := a.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
		if err != nil {
			return nil, err
		}
		x.it = it
		x.dbKey = x.skipWritten(it.First())
	}
	x.pick()
	return x, nil
}

// skipWritten steps the database iterator past the keys the batch wrote
// (those it removed are gone; those it set come from the heap) and returns
// its key, nil if none is left.
func (x *indexIter) skipWritten(valid bool) []byte {
	for ; valid; valid = x.it.Next() {
		if _, ok := x.a.index[string(x.it.Key())]; !ok {
			return x.it.Key()
		}
	}
	return nil
}

// pick makes key the smaller of the database's key and the heap's first
// live key below upper.
func (x *indexIter) pick() {
	h := &x.a.added
	for len(*h) > 0 && !x.a.index[(*h)[0]] {
		heap.Pop(h) // removed since it was set
	}
	var top []byte
	if len(*h) > 0 && (*h)[0] < string(x.upper) {
		top = []byte((*h)[0])
	}
	switch {
	case top != nil && (x.dbKey == nil || bytes.Compare(top, x.dbKey) < 0):
		x.key, x.fromB = top, true
	default:
		x.key, x.fromB = x.dbKey, false
	}
}

// Key returns the current key, nil when the scan is done. It is valid
// until Next.
func (x *indexIter) Key() []byte { return x.key }

// Next passes the current key, which counts as swept from then on.
func (x *indexIter) Next() {
	if x.fromB {
		k := heap.Pop(&x.a.added).(string)
		x.a.index[k] = false
	} else {
		x.dbKey = x.skipWritten(x.it.Next())
	}
	x.pick()
}

// Close closes the scan and moves the batch's dbFrom past the database
// keys it passed: each was swept (it yielded it) or removed by the batch.
func (x *indexIter) Close() error {
	if x.it == nil {
		return nil
	}
	from := x.upper
	if x.dbKey != nil {
		from = x.dbKey
	}
	// A copy: the key is the iterator's, and the old dbFrom its bound.
	x.a.dbFrom = bytes.Clone(from)
	return x.it.Close()
}

// keyHeap is a min-heap of keys (container/heap).
type keyHeap []string

func (h keyHeap) Len() int           { return len(h) }
func (h keyHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h keyHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *keyHeap) Push(x any)        { *h = append(*h, x.(string)) }
func (h *keyHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

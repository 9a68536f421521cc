package storage

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/keystore-dev/keystore/entry"
	"github.com/keystore-dev/keystore/internal/bugs"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	"github.com/keystore-dev/keystore/rules"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Apply applies committed entries in log order and returns one
// statev1.Result per entry (nil for entries that carry no command; for a
// packed entry, a Result whose packed field holds one result per proposal,
// each with its request id); the results are not modified afterwards, so
// they may be handed to other goroutines. The state
// changes, the applied index and term, the log time and cs (the ConfState
// after any conf change among the entries; nil if none) are written in one
// Pebble batch, so the applied index always describes the state beside it.
// Entries at or below the applied index are skipped.
//
// The batch is not synced: every entry it applies is already in the synced
// log, and a crash that loses the batch loses its applied index with it, so
// the entries are applied again on restart.
func (s *Store) Apply(entries []raftpb.Entry, cs *raftpb.ConfState) ([]*statev1.Result, error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	fs := filters{s.filter.Load(), s.nextFilter.Load()}
	s.mu.RLock()
	meta := proto.Clone(s.meta).(*statev1.Meta)
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	// Decode first: the batch keeps its index writes in memory only up to
	// the last sweep.
	decoded := make([]decodedEntry, len(entries))
	lastSweep := -1
	for i := range entries {
		e := &entries[i]
		if e.Index <= meta.AppliedIndex || e.Type != raftpb.EntryNormal || len(e.Data) == 0 {
			continue
		}
		d := &decoded[i]
		if err := entry.Decode(e.Data, &d.env); err != nil {
			// Only the leader writes entries, always well formed; an
			// undecodable one is applied as a no-op on every replica.
			s.logger.Error("undecodable entry", "index", e.Index, "err", err)
			d.bad = true
			continue
		}
		// NB: an entry of a newer log format is never applied (nor
		// skipped): this replica stops, and nothing of the batch is
		// written. The leader writes one only once every member supports
		// it (see package entry).
		if need := entry.Needs(&d.env); need > entry.ClusterVersion {
			return nil, checkClusterVersion(fmt.Sprintf("entry %d", e.Index), need) // formatted only to refuse
		}
		if len(d.env.Proposals) > 0 {
			// A packed entry: its proposals each name one record (an
			// Expire among them is refused at apply), so no sweep.
			d.packed = make([]*statev1.Command, len(d.env.Proposals))
			for j, p := range d.env.Proposals {
				d.packed[j] = decodeCommand(p.GetCommand())
			}
			continue
		}
		if len(d.env.Command) == 0 {
			continue // a tick
		}
		d.cmd = decodeCommand(d.env.Command)
		if _, ok := d.cmd.GetOp().(*statev1.Command_Expire); ok {
			lastSweep = i
		}
	}
	b := newApplyBatch(s.db, lastSweep >= 0, fs)
	if s.countsUsage {
		b.usage = make(map[string]Usage)
	}
	defer b.Close()
	results := make([]*statev1.Result, len(entries))
	var touched [][]byte
	watching := s.watch.active()
	for i := range entries {
		e := &entries[i]
		if e.Index <= meta.AppliedIndex {
			continue
		}
		meta.AppliedIndex, meta.AppliedTerm = e.Index, e.Term
		if e.Type == raftpb.EntryConfChange {
			if err := applyMembership(meta, e); err != nil {
				return nil, err
			}
			continue
		}
		if e.Type != raftpb.EntryNormal || len(e.Data) == 0 {
			continue
		}
		d := &decoded[i]
		if d.bad {
			results[i] = rules.Invalid()
			continue
		}
		// Log time is the largest stamp applied: never backwards.
		meta.LogTime = max(meta.LogTime, d.env.Time)
		if bugs.LocalClock {
			meta.LogTime = time.Now().UnixNano() // deliberately wrong: see internal/bugs
		}
		if v := d.env.GetSetClusterVersion(); v > 0 {
			// A rise of the cluster version (never a fall); it carries
			// nothing else. Recorded in meta, in this batch.
			meta.ClusterVersion = max(entry.EffectiveVersion(meta.ClusterVersion), v)
			continue
		}
		if d.packed != nil {
			res, keys, err := s.applyPacked(b, d, e.Index, meta)
			if err != nil {
				return nil, err
			}
			results[i] = res
			if watching {
				touched = append(touched, keys...)
			}
			continue
		}
		if len(d.env.Command) == 0 {
			continue // a tick
		}
		res, keys, err := s.applyCommand(b, d.cmd, d.env.RequestId, e.Index, meta)
		if err != nil {
			return nil, err
		}
		if i == lastSweep {
			b.noMoreScans()
		}
		res.LogTime = meta.LogTime
		results[i] = res
		if watching {
			touched = append(touched, keys...)
		}
	}
	if cs != nil {
		v, err := cs.Marshal()
		if err != nil {
			return nil, err
		}
		meta.ConfState = v
	}
	if err := b.b.Set(metaKey, mustMarshal(meta), nil); err != nil {
		return nil, err
	}
	// The format file says so before the batch that records a cluster
	// version a binary from before cluster versions must not take over.
	if err := s.raiseFormat(meta.ClusterVersion); err != nil {
		return nil, err
	}
	if err := s.guard(func() error { return b.b.Commit(pebble.NoSync) }); err != nil {
		return nil, fmt.Errorf("storage: apply: %w", err)
	}
	s.mu.Lock()
	s.meta = meta
	if cs != nil {
		s.confState = *cs
	}
	s.mu.Unlock()
	s.usage.add(b.usage)
	if fs.next == nil && (fs.cur == nil || fs.cur.full()) {
		s.startFilterBuild() // none yet (a build failed), or too full
	}
	for _, k := range touched {
		s.watch.notify(string(k))
	}
	return results, nil
}

// decodedEntry is one entry's envelope and command, decoded once.
type decodedEntry struct {
	env    statev1.Entry
	cmd    *statev1.Command   // nil: undecodable
	packed []*statev1.Command // a packed entry's commands (nil: undecodable)
	bad    bool               // the envelope is undecodable
}

// decodeCommand decodes an encoded Command; nil if it is undecodable.
func decodeCommand(b []byte) *statev1.Command {
	cmd := &statev1.Command{}
	if err := proto.Unmarshal(b, cmd); err != nil {
		return nil
	}
	return cmd
}

// applyPacked applies the proposals of a packed entry in order, each at the
// entry's index, and returns a result holding one result per proposal
// (carrying its request id). An undecodable proposal, or one the packing
// rules would not have admitted (entry.Packer: one that must travel alone, names a record an
// earlier proposal of the entry named, or is a second Claim) is refused
// as an invalid command; the leader never packs one. So no two claims, of
// one key or of two, share a token (the entry's index).
func (s *Store) applyPacked(b *applyBatch, d *decodedEntry, index uint64, meta *statev1.Meta) (*statev1.Result, [][]byte, error) {
	subs := make([]*statev1.Result, len(d.packed))
	pk := entry.NewPacker(entry.Limits{})
	var touched [][]byte
	for j, cmd := range d.packed {
		prop := d.env.Proposals[j]
		reqID := prop.GetRequestId()
		p := entry.NewProposal(reqID, prop.GetCommand())
		var res *statev1.Result
		if cmd == nil || !pk.Admits(&p) {
			res = rules.Invalid()
		} else {
			pk.Add(&p)
			var (
				keys [][]byte
				err  error
			)
			res, keys, err = s.applyCommand(b, cmd, reqID, index, meta)
			if err != nil {
				return nil, nil, err
			}
			touched = append(touched, keys...)
		}
		res.LogTime = meta.LogTime
		res.RequestId = reqID
		subs[j] = res
	}
	return &statev1.Result{Packed: subs, LogTime: meta.LogTime}, touched, nil
}

// applyCommand applies one decoded command inside b. It returns the result
// and the record keys it changed.
func (s *Store) applyCommand(b *applyBatch, cmd *statev1.Command, requestID, index uint64, meta *statev1.Meta) (*statev1.Result, [][]byte, error) {
	if cmd == nil {
		return rules.Invalid(), nil, nil
	}
	if e, ok := cmd.GetOp().(*statev1.Command_Expire); ok {
		return applyExpire(b, e.Expire, meta)
	}
	ns, key, ok := rules.Target(cmd)
	if !ok || len(ns) > maxNamespaceLen {
		return rules.Invalid(), nil, nil
	}
	k := recordKey(ns, key)
	// The stored record is read even if expired: transition treats it as
	// absent, and putRecord must remove its expiry index entry.
	stored, err := b.getRecord(k)
	if err != nil {
		return nil, nil, fmt.Errorf("record %q/%q: %w", ns, key, err)
	}
	next, write, res := rules.Transition(stored, cmd, index, requestID, meta.LogTime)
	if !write {
		return res, nil, nil
	}
	if err := putRecord(b, ns, key, stored, next, meta); err != nil {
		return nil, nil, err
	}
	return res, [][]byte{k}, nil
}

// putRecord replaces stored (nil if absent) by next (nil deletes) under
// (ns, key), keeping the expiry index and the record count in step, in the
// same batch.
func putRecord(b *applyBatch, ns, key string, stored, next *statev1.Record, meta *statev1.Meta) error {
	k := recordKey(ns, key)
	if b.usage != nil {
		var records int64
		switch {
		case stored == nil && next != nil:
			records = 1
		case stored != nil && next == nil:
			records = -1
		}
		b.moveUsage(ns, records, recordBytes(k, next)-recordBytes(k, stored))
	}
	// An index entry is set once per expires_at and removed once, so a
	// SingleDelete removes it: it and the Set vanish together at the
	// first compaction that meets both (see DESIGN.md).
	if stored != nil && (next == nil || stored.ExpiresAt != next.ExpiresAt) {
		if err := b.singleDeleteIndex(expiryKey(stored.ExpiresAt, ns, key)); err != nil {
			return err
		}
	}
	if next == nil {
		if stored != nil {
			meta.StoredRecords--
		}
		return b.deleteRecord(k)
	}
	if stored == nil || stored.ExpiresAt != next.ExpiresAt {
		if err := b.setIndex(expiryKey(next.ExpiresAt, ns, key)); err != nil {
			return err
		}
	}
	if stored == nil {
		meta.StoredRecords++
		b.fs.add(k) // before any later lookup of k can consult the filter
	}
	return b.setRecord(k, next)
}

// Expire bounds.
const (
	// DefaultExpireLimit is the batch size a sweeper should propose.
	DefaultExpireLimit = 1000
	// MaxExpireLimit caps one Expire entry, so that no entry stalls the log.
	MaxExpireLimit = 10_000
)

// applyExpire deletes the records that expired at or before
// min(up_to, log time), oldest first, at most limit of them. The entry's own
// time bounds the cut-off, so no proposer's clock can expire a record early.
//
// The swept index entries form a prefix of the index, so they go in one
// range deletion rather than a tombstone each.
func applyExpire(b *applyBatch, e *statev1.Expire, meta *statev1.Meta) (*statev1.Result, [][]byte, error) {
	limit := int(min(max(e.GetLimit(), 1), MaxExpireLimit))
	cutoff := min(e.GetUpTo(), meta.LogTime)
	it, err := b.scanIndex(expiryBound(cutoff))
	if err != nil {
		return nil, nil, err
	}
	var (
		touched [][]byte
		last    []byte
		n       int
	)
	for ; it.Key() != nil && n < limit; it.Next() {
		t, ns, key, err := splitExpiryKey(it.Key())
		if err != nil {
			_ = it.Close()
			return nil, nil, fmt.Errorf("%w: expiry key %s", ErrCorrupt, keyDigest(it.Key()))
		}
		last = append(last[:0], it.Key()...)
		n++
		k := recordKey(ns, key)
		rec, err := b.getRecord(k)
		if err != nil {
			_ = it.Close()
			return nil, nil, err
		}
		// NB: an index entry whose record moved on (a later expires_at) is
		// stale only if maintenance failed; it is dropped with the range.
		if rec == nil || rec.ExpiresAt != t {
			continue
		}
		if err := b.deleteRecord(k); err != nil {
			_ = it.Close()
			return nil, nil, err
		}
		meta.StoredRecords--
		if b.usage != nil {
			b.expireUsage(ns, recordBytes(k, rec))
		}
		touched = append(touched, k)
	}
	more := it.Key() != nil
	if err := it.Close(); err != nil {
		return nil, nil, err
	}
	if n > 0 {
		if err := b.sweptIndex(last); err != nil {
			return nil, nil, err
		}
	}
	return &statev1.Result{Expired: uint32(len(touched)), More: more}, touched, nil
}

// mustMarshal encodes m deterministically. Encoding a valid message in
// memory cannot fail.
func mustMarshal(m proto.Message) []byte {
	v, err := marshal.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("storage: marshal %T: %v", m, err))
	}
	return v
}

// applyMembership keeps meta's members in step with a conf change entry:
// the member its context names is added, promoted, updated or removed.
// (raft applies the change itself to the ConfState, which Apply's caller
// passes in; this keeps the addresses beside it, in the same batch.)
func applyMembership(meta *statev1.Meta, e *raftpb.Entry) error {
	var cc raftpb.ConfChange
	if err := cc.Unmarshal(e.Data); err != nil {
		return fmt.Errorf("%w: conf change at %d: %v", ErrCorrupt, e.Index, err)
	}
	m := entry.DecodeConfChangeContext(cc.Context).GetMember()
	if m == nil || m.GetId() != cc.NodeID {
		m = &statev1.Member{Id: cc.NodeID}
	}
	i, found := slices.BinarySearchFunc(meta.Members, cc.NodeID, func(x *statev1.Member, id uint64) int {
		return cmp.Compare(x.GetId(), id)
	})
	switch cc.Type {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode, raftpb.ConfChangeUpdateNode:
		next := proto.Clone(m).(*statev1.Member)
		if found {
			// A promotion or an update keeps what the change does not say.
			cur := meta.Members[i]
			if next.Name == "" {
				next.Name = cur.GetName()
			}
			if next.PeerAddress == "" {
				next.PeerAddress = cur.GetPeerAddress()
			}
			if next.ClientAddress == "" {
				next.ClientAddress = cur.GetClientAddress()
			}
			next.Learner = cur.GetLearner()
			next.Started = next.Started || cur.GetStarted()
		}
		switch cc.Type {
		case raftpb.ConfChangeAddNode:
			next.Learner = false
		case raftpb.ConfChangeAddLearnerNode:
			next.Learner = true
		}
		if found {
			meta.Members[i] = next
		} else {
			meta.Members = slices.Insert(meta.Members, i, next)
		}
	case raftpb.ConfChangeRemoveNode:
		if found {
			meta.Members = slices.Delete(meta.Members, i, i+1)
		}
	}
	return nil
}

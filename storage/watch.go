package storage

import (
	"sync"
	"sync/atomic"
)

// watchHub wakes callers waiting for a record to change (a Claim with wait
// blocks on it instead of polling). A subscription fires once.
type watchHub struct {
	n    atomic.Int64 // number of live subscriptions, read on the apply path
	mu   sync.Mutex
	subs map[string]map[*chan struct{}]struct{}
}

func (h *watchHub) active() bool { return h.n.Load() > 0 }

func (h *watchHub) subscribe(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	h.mu.Lock()
	if h.subs == nil {
		h.subs = make(map[string]map[*chan struct{}]struct{})
	}
	set := h.subs[key]
	if set == nil {
		set = make(map[*chan struct{}]struct{})
		h.subs[key] = set
	}
	set[&ch] = struct{}{}
	h.n.Add(1)
	h.mu.Unlock()
	cancel := func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if set, ok := h.subs[key]; ok {
			if _, ok := set[&ch]; ok {
				delete(set, &ch)
				h.n.Add(-1)
				if len(set) == 0 {
					delete(h.subs, key)
				}
			}
		}
	}
	return ch, cancel
}

func (h *watchHub) notify(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs[key] {
		close(*ch)
		h.n.Add(-1)
	}
	delete(h.subs, key)
}

func (h *watchHub) notifyAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, set := range h.subs {
		for ch := range set {
			close(*ch)
			h.n.Add(-1)
		}
	}
	h.subs = nil
}

// Watch returns a channel that is closed the next time an applied command
// changes the record (namespace, key), or a snapshot replaces the state.
// The caller must call cancel when it stops waiting.
func (s *Store) Watch(namespace, key string) (changed <-chan struct{}, cancel func()) {
	return s.watch.subscribe(string(recordKey(namespace, key)))
}

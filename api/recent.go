package api

import "sync"

// recentKeys remembers the last keys this node saw claimed or completed, so
// that a Claim can tell a likely retry (worth a read round instead of a log
// write) from a fresh key (which must be written anyway) without a storage
// lookup. It is only a hint: a key it forgot goes through the log, which
// answers a retry just as correctly.
type recentKeys struct {
	mu   sync.Mutex
	ring []string
	pos  int
	set  map[string]int // key → its slot in ring
}

func newRecentKeys(size int) *recentKeys {
	return &recentKeys{ring: make([]string, size), set: make(map[string]int, size)}
}

func recentKey(namespace, key string) string { return namespace + "\x00" + key }

func (r *recentKeys) add(k string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[k]; ok {
		return
	}
	if old := r.ring[r.pos]; old != "" && r.set[old] == r.pos {
		delete(r.set, old)
	}
	r.ring[r.pos] = k
	r.set[k] = r.pos
	r.pos = (r.pos + 1) % len(r.ring)
}

func (r *recentKeys) has(k string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.set[k]
	return ok
}

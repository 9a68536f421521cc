package storage

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestEntryKeyGolden(t *testing.T) {
	tests := []struct {
		index uint64
		want  []byte
	}{
		{0, []byte{0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0}},
		{1, []byte{0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x01}},
		{1<<40 + 5, []byte{0x01, 0x01, 0, 0, 0x01, 0, 0, 0, 0, 0x05}},
		{math.MaxUint64, []byte{0x01, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
	}
	for _, tt := range tests {
		if got := entryKey(tt.index); !bytes.Equal(got, tt.want) {
			t.Errorf("entryKey(%d) = %x; want %x", tt.index, got, tt.want)
		}
	}
}

func TestEntryKeysSortByIndex(t *testing.T) {
	indexes := []uint64{0, 1, 2, 255, 256, 65535, 65536, 1 << 32, 1<<40 + 5, math.MaxUint64 - 1, math.MaxUint64}
	for i := 1; i < len(indexes); i++ {
		a, b := entryKey(indexes[i-1]), entryKey(indexes[i])
		if bytes.Compare(a, b) >= 0 {
			t.Errorf("entryKey(%d) = %x does not sort before entryKey(%d) = %x", indexes[i-1], a, indexes[i], b)
		}
	}
}

func TestRecordKeyGolden(t *testing.T) {
	tests := []struct {
		namespace, key string
		want           []byte
	}{
		{"payments", "order-1", append([]byte{0x03, 0x08}, "paymentsorder-1"...)},
		{"a", "bc", []byte{0x03, 0x01, 'a', 'b', 'c'}},
		{"ab", "c", []byte{0x03, 0x02, 'a', 'b', 'c'}},
		{"", "", []byte{0x03, 0x00}},
	}
	for _, tt := range tests {
		if got := recordKey(tt.namespace, tt.key); !bytes.Equal(got, tt.want) {
			t.Errorf("recordKey(%q, %q) = %x; want %x", tt.namespace, tt.key, got, tt.want)
		}
	}
}

// TestRecordKeyNamespacesNeverInterleave sorts the keys of several
// namespaces, including keys whose bytes spell another namespace, and checks
// that every namespace's keys form one contiguous run.
func TestRecordKeyNamespacesNeverInterleave(t *testing.T) {
	if bytes.Equal(recordKey("a", "bc"), recordKey("ab", "c")) {
		t.Fatalf("recordKey(%q, %q) == recordKey(%q, %q); want different keys", "a", "bc", "ab", "c")
	}
	namespaces := []string{"a", "ab", "abc", "b", "a.b", "a-", "z", strings.Repeat("n", maxNamespaceLen)}
	keys := []string{"", "b", "bc", "c", "\x00", "\x7f", "\xff\xff", "ab", "\x02ab", "\x01b", "zzzz", strings.Repeat("\xff", 255)}
	type entry struct {
		k  []byte
		ns string
	}
	var all []entry
	for _, ns := range namespaces {
		for _, k := range keys {
			all = append(all, entry{recordKey(ns, k), ns})
		}
	}
	slices.SortFunc(all, func(a, b entry) int { return bytes.Compare(a.k, b.k) })
	seen := map[string]bool{}
	for i, e := range all {
		if i > 0 && all[i-1].ns == e.ns {
			continue
		}
		if seen[e.ns] {
			t.Fatalf("namespace %q keys interleave with another namespace's at sorted position %d (key %x)", e.ns, i, e.k)
		}
		seen[e.ns] = true
	}
	// No namespace's prefix is a prefix of another's key.
	for _, a := range namespaces {
		for _, b := range namespaces {
			if a == b {
				continue
			}
			for _, k := range keys {
				if p := recordKey(a, ""); bytes.HasPrefix(recordKey(b, k), p) {
					t.Errorf("recordKey(%q, %q) = %x has the prefix of namespace %q (%x)", b, k, recordKey(b, k), a, p)
				}
			}
		}
	}
}

func TestSplitRecordKeyRoundTrip(t *testing.T) {
	tests := []struct{ namespace, key string }{
		{"payments", "order-1"},
		{"a", "bc"},
		{"ab", "c"},
		{"ns", ""},
		{"", "k"},
		{strings.Repeat("n", maxNamespaceLen), "key"},
		{"ns", "\x00\x03\xff binary \x01"},
	}
	for _, tt := range tests {
		ns, key, err := splitRecordKey(recordKey(tt.namespace, tt.key))
		if err != nil || ns != tt.namespace || key != tt.key {
			t.Errorf("splitRecordKey(recordKey(%q, %q)) = %q, %q, %v; want %q, %q, nil",
				tt.namespace, tt.key, ns, key, err, tt.namespace, tt.key)
		}
	}
}

func TestSplitRecordKeyRejectsMalformedKeys(t *testing.T) {
	tests := []struct {
		name string
		key  []byte
	}{
		{"nil", nil},
		{"prefix only", []byte{0x03}},
		{"meta key", metaKey},
		{"entry key", entryKey(1)},
		{"namespace length past end", []byte{0x03, 0x05, 'a', 'b'}},
		{"namespace length 255, no bytes", []byte{0x03, 0xff}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, key, err := splitRecordKey(tt.key)
			if !errors.Is(err, errBadKey) {
				t.Errorf("splitRecordKey(%x) = %q, %q, %v; want errBadKey", tt.key, ns, key, err)
			}
		})
	}
}

func TestFixedKeysGolden(t *testing.T) {
	tests := []struct {
		name      string
		got, want []byte
	}{
		{"hardStateKey", hardStateKey, []byte{0x01, 0x02}},
		{"logBaseKey", logBaseKey, []byte{0x01, 0x03}},
		{"metaKey", metaKey, []byte{0x02, 0x01}},
		{"stateStart", stateStart, []byte{0x02}},
		{"stateEnd", stateEnd, []byte{0x10}},
		{"entryStart", entryStart, []byte{0x01, 0x01}},
		{"entryEnd", entryEnd, []byte{0x01, 0x02}},
	}
	for _, tt := range tests {
		if !bytes.Equal(tt.got, tt.want) {
			t.Errorf("%s = %x; want %x", tt.name, tt.got, tt.want)
		}
	}
}

func inRange(k, lo, hi []byte) bool {
	return bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0
}

// TestKeyRanges checks that the state machine is exactly the keys in
// [stateStart, stateEnd): snapshots copy that range and restores replace it,
// so a Raft key inside it, or a record key outside it, would be lost or
// clobbered.
func TestKeyRanges(t *testing.T) {
	stateKeys := map[string][]byte{
		"metaKey":               metaKey,
		"record payments":       recordKey("payments", "order-1"),
		"record empty":          recordKey("", ""),
		"record max namespace":  recordKey(strings.Repeat("\xff", maxNamespaceLen), strings.Repeat("\xff", 255)),
		"record low bytes":      recordKey("\x00", "\x00"),
		"record ns looks raft":  recordKey("\x01\x01", "x"),
		"record key looks meta": recordKey("a", "\x02\x01"),
	}
	for name, k := range stateKeys {
		if !inRange(k, stateStart, stateEnd) {
			t.Errorf("%s = %x outside the state range [%x, %x)", name, k, stateStart, stateEnd)
		}
		if inRange(k, entryStart, entryEnd) {
			t.Errorf("%s = %x inside the entry range [%x, %x)", name, k, entryStart, entryEnd)
		}
	}
	raftKeys := map[string][]byte{
		"hardStateKey":       hardStateKey,
		"logBaseKey":         logBaseKey,
		"entryKey(0)":        entryKey(0),
		"entryKey(1)":        entryKey(1),
		"entryKey(max)":      entryKey(math.MaxUint64),
		"entryKey(2^40 + 5)": entryKey(1<<40 + 5),
	}
	for name, k := range raftKeys {
		if inRange(k, stateStart, stateEnd) {
			t.Errorf("%s = %x inside the state range [%x, %x)", name, k, stateStart, stateEnd)
		}
	}
	for _, i := range []uint64{0, 1, 1<<40 + 5, math.MaxUint64} {
		if k := entryKey(i); !inRange(k, entryStart, entryEnd) {
			t.Errorf("entryKey(%d) = %x outside the entry range [%x, %x)", i, k, entryStart, entryEnd)
		}
	}
	for _, k := range [][]byte{hardStateKey, logBaseKey} {
		if inRange(k, entryStart, entryEnd) {
			t.Errorf("key %x inside the entry range [%x, %x)", k, entryStart, entryEnd)
		}
	}
}

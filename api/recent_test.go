package api

import (
	"fmt"
	"testing"
)

func TestRecentKeysForgetsTheOldest(t *testing.T) {
	r := newRecentKeys(3)
	for i := range 3 {
		r.add(fmt.Sprint(i))
	}
	r.add("1") // already there: no slot used
	for i := range 3 {
		if !r.has(fmt.Sprint(i)) {
			t.Fatalf("key %d forgotten while the ring had room", i)
		}
	}
	r.add("3") // evicts 0, the oldest
	if r.has("0") || !r.has("1") || !r.has("2") || !r.has("3") {
		t.Fatalf("after one more key: has 0=%v 1=%v 2=%v 3=%v; want only 0 forgotten", r.has("0"), r.has("1"), r.has("2"), r.has("3"))
	}
}

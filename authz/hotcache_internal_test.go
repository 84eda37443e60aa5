package authz

import "testing"

// The hot front never holds more than maxHotDecisions entries: it is
// emptied when full, and what is put after that is there.
func TestHotDecisionsStayBounded(t *testing.T) {
	var h hotDecisions
	e := &decisionEntry{perm: "p"}
	for k := range uint64(3 * maxHotDecisions) {
		h.put(k, e)
	}
	n := 0
	h.m.Range(func(any, any) bool { n++; return true })
	if n == 0 || n > maxHotDecisions {
		t.Fatalf("%d entries after %d puts, want 1..%d", n, 3*maxHotDecisions, maxHotDecisions)
	}
	last := uint64(3*maxHotDecisions - 1)
	if got, ok := h.get(last); !ok || got != e {
		t.Fatalf("the last entry put is not there")
	}
	h.clear()
	if _, ok := h.get(last); ok {
		t.Fatal("an entry survived clear")
	}
}

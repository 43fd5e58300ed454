package supervisor

import (
	"slices"
	"testing"
	"time"
)

// TestIDsIncrease: ids are valid ULIDs that strictly increase, within a
// millisecond, when the clock steps back, and past an id seen in a
// journal that lies in the future.
func TestIDsIncrease(t *testing.T) {
	var g, other idGen
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	future := other.next(now.Add(time.Hour)) // a journal's, from a clock ahead
	var ids []string
	for i := range 1000 {
		at := now
		switch {
		case i%3 == 1:
			at = now.Add(-time.Hour) // the clock stepped back
		case i == 500:
			g.seen(future)
		}
		ids = append(ids, g.next(at))
	}
	for i, id := range ids {
		if !validID(id) || len(id) != 26 {
			t.Fatalf("id %d %q is not a canonical ULID", i, id)
		}
		if i > 0 && !idLess(ids[i-1], id) {
			t.Fatalf("id %d %q is not greater than %q", i, id, ids[i-1])
		}
	}
	if !idLess(future, ids[500]) {
		t.Errorf("after seeing %s the next id is %s", future, ids[500])
	}
}

// TestIDsOfTwoSupervisors: two generators (two supervisors, two state
// directories) started in the same millisecond give different ids.
func TestIDsOfTwoSupervisors(t *testing.T) {
	var a, b idGen
	now := time.Now()
	seen := map[string]bool{}
	for range 100 {
		for _, id := range []string{a.next(now), b.next(now)} {
			if seen[id] {
				t.Fatalf("id %s given twice", id)
			}
			seen[id] = true
		}
	}
}

func TestIDOrder(t *testing.T) {
	ids := []string{"01JDX3M5Q8W4ZC2V7K9N0B6H1T", "r000010", "01JDX3M5Q8W4ZC2V7K9N0B6H1S", "r000002", "r000100"}
	slices.SortFunc(ids, func(a, b string) int {
		if idLess(a, b) {
			return -1
		}
		if idLess(b, a) {
			return 1
		}
		return 0
	})
	want := []string{"r000002", "r000010", "r000100", "01JDX3M5Q8W4ZC2V7K9N0B6H1S", "01JDX3M5Q8W4ZC2V7K9N0B6H1T"}
	if !slices.Equal(ids, want) {
		t.Errorf("sorted %v, want %v", ids, want)
	}
	for _, bad := range []string{"", "x", "01jdx3m5q8w4zc2v7k9n0b6h1t", "01JDX3M5Q8W4ZC2V7K9N0B6H1", "r-1", "../../etc"} {
		if validID(bad) {
			t.Errorf("validID(%q) = true", bad)
		}
	}
}

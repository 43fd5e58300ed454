package p2c

import (
	"context"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/policytest"
)

func TestConformance(t *testing.T) {
	policytest.Run(t, func() sdk.Policy { return New() })
}

// Of any two, the less loaded wins: the most loaded instance is never
// chosen, the least loaded most often, and one ready candidate always.
func TestLessLoadedOfTwo(t *testing.T) {
	p := NewSeeded(7, 7)
	cands := []sdk.Candidate{
		{ID: "a", Index: 0, Ready: true, OpenRooms: 9},
		{ID: "b", Index: 1, Ready: true, OpenRooms: 0},
		{ID: "c", Index: 2, Ready: true, OpenRooms: 4},
		{ID: "d", Index: 3, Ready: false, OpenRooms: 0},
	}
	counts := map[string]int{}
	for range 3000 {
		d, err := p.Schedule(context.Background(), sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: cands}}})
		if err != nil {
			t.Fatal(err)
		}
		counts[d.Choices["t"]]++
	}
	// b wins every pair it is in (2 of 3 pairs), c wins {a, c}.
	if counts["a"] != 0 || counts["d"] != 0 || counts["b"] < 1800 || counts["c"] < 800 {
		t.Fatalf("choices %v: want a and d never, b about 2000, c about 1000", counts)
	}
	one := []sdk.Candidate{{ID: "x", Ready: false}, {ID: "y", Index: 1, Ready: true, OpenRooms: 50}}
	d, err := p.Schedule(context.Background(), sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: one}}})
	if err != nil || d.Choices["t"] != "y" {
		t.Fatalf("one ready candidate: %v %v", d.Choices, err)
	}
}

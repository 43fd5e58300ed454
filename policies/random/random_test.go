package random

import (
	"context"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/policytest"
)

func TestConformance(t *testing.T) {
	policytest.Run(t, func() sdk.Policy { return New() })
}

// Every ready candidate gets about its share, a not-ready one none, and a
// seed replays the same choices.
func TestUniformAndSeeded(t *testing.T) {
	cands := []sdk.Candidate{{ID: "a", Ready: true}, {ID: "b", Index: 1, Ready: false}, {ID: "c", Index: 2, Ready: true}, {ID: "d", Index: 3, Ready: true}}
	req := sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: cands}}}
	run := func(p *Policy) (map[string]int, string) {
		counts, seq := map[string]int{}, ""
		for range 3000 {
			d, err := p.Schedule(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			counts[d.Choices["t"]]++
			seq += d.Choices["t"]
		}
		return counts, seq
	}
	counts, seq := run(NewSeeded(1, 2))
	if counts["b"] != 0 {
		t.Fatalf("chose the not-ready candidate %d times", counts["b"])
	}
	for _, id := range []string{"a", "c", "d"} {
		if n := counts[id]; n < 850 || n > 1150 { // 1000 expected; ±15% is > 9 sigma
			t.Errorf("%s chosen %d times of 3000, want about 1000 (%v)", id, n, counts)
		}
	}
	if _, again := run(NewSeeded(1, 2)); again != seq {
		t.Error("the same seed gave other choices")
	}
	if _, other := run(NewSeeded(3, 4)); other == seq {
		t.Error("another seed gave the same 3000 choices")
	}
}

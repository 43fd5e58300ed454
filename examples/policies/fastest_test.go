package fastest

import (
	"context"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/policytest"
)

// The conformance kit, as every policy author runs it.
func TestConformance(t *testing.T) {
	policytest.Run(t, func() sdk.Policy { return Policy{} })
}

func TestPicksTheFastest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cands []sdk.Candidate
		want  string
	}{
		{"lowest latency", []sdk.Candidate{
			{ID: "a", Index: 0, Ready: true, LatencyEWMAms: 30},
			{ID: "b", Index: 1, Ready: true, LatencyEWMAms: 12},
			{ID: "c", Index: 2, Ready: false, LatencyEWMAms: 1},
		}, "b"},
		{"not measured yet goes first", []sdk.Candidate{
			{ID: "a", Index: 0, Ready: true, LatencyEWMAms: 5},
			{ID: "b", Index: 1, Ready: true},
		}, "b"},
		{"tie: fewer open rooms", []sdk.Candidate{
			{ID: "a", Index: 0, Ready: true, LatencyEWMAms: 5, OpenRooms: 2},
			{ID: "b", Index: 1, Ready: true, LatencyEWMAms: 5, OpenRooms: 1},
		}, "b"},
	} {
		d, err := Policy{}.Schedule(context.Background(), sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: tc.cands}}})
		if err != nil || d.Choices["t"] != tc.want {
			t.Errorf("%s: chose %q (%v), want %q", tc.name, d.Choices["t"], err, tc.want)
		}
	}
}

package leastloaded

import (
	"context"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/policytest"
)

func TestConformance(t *testing.T) {
	policytest.Run(t, func() sdk.Policy { return New() })
}

func TestFewestRoomsThenLatencyThenIndex(t *testing.T) {
	p := New()
	for _, tc := range []struct {
		name  string
		cands []sdk.Candidate
		want  string
	}{
		{"fewest open rooms", []sdk.Candidate{
			{ID: "a", Index: 0, Ready: true, OpenRooms: 3, LatencyEWMAms: 1},
			{ID: "b", Index: 1, Ready: true, OpenRooms: 1, LatencyEWMAms: 50},
			{ID: "c", Index: 2, Ready: false, OpenRooms: 0},
		}, "b"},
		{"tie on rooms: lower latency", []sdk.Candidate{
			{ID: "a", Index: 0, Ready: true, OpenRooms: 2, LatencyEWMAms: 40},
			{ID: "b", Index: 1, Ready: true, OpenRooms: 2, LatencyEWMAms: 20},
		}, "b"},
		{"full tie: lower index", []sdk.Candidate{
			{ID: "b", Index: 1, Ready: true, OpenRooms: 2, LatencyEWMAms: 20},
			{ID: "a", Index: 0, Ready: true, OpenRooms: 2, LatencyEWMAms: 20},
		}, "a"},
	} {
		d, err := p.Schedule(context.Background(), sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: tc.cands}}})
		if err != nil || d.Choices["t"] != tc.want {
			t.Errorf("%s: chose %q (%v), want %q", tc.name, d.Choices["t"], err, tc.want)
		}
	}
}

package plugintest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/plugintest"
)

// first chooses the first ready candidate of every phase.
type first struct{}

func (first) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "first", Kind: sdk.KindPolicy, Version: "1", APIVersions: []int{sdk.PolicyAPIVersion}}, nil
}

func (first) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	d := sdk.Decision{Choices: map[string]string{}}
	for _, ph := range req.Phases {
		for _, c := range ph.Candidates {
			if c.Ready {
				d.Choices[ph.Phase] = c.ID
				break
			}
		}
	}
	return d, nil
}

// TestPolicy is how a policy author tests a policy through the same gRPC
// layer the supervisor uses.
func TestPolicy(t *testing.T) {
	p := plugintest.Policy(t, first{})
	info, err := p.Info(context.Background())
	if err != nil || info.Name != "first" || !info.Speaks(sdk.PolicyAPIVersion) {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	d, err := p.Schedule(context.Background(), sdk.ScheduleRequest{RequestID: "r1", Phases: []sdk.PhaseCandidates{
		{Phase: "transformer", Candidates: []sdk.Candidate{{ID: "transformer-0"}, {ID: "transformer-1", Index: 1, Ready: true}}},
	}})
	if got := fmt.Sprint(d.Choices, err); got != "map[transformer:transformer-1] <nil>" {
		t.Fatalf("Schedule = %s", got)
	}
}

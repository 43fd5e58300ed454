package policytest

import (
	"context"
	"strings"
	"testing"

	"github.com/phased/phased/sdk"
)

// first is the simplest conforming policy: the first ready candidate.
type first struct{}

func (first) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "first", Kind: sdk.KindPolicy, Version: "1", APIVersions: []int{sdk.PolicyAPIVersion}}, nil
}

func (first) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	return sdk.EachPhase("first", req, func(_ string, ready []sdk.Candidate) (sdk.Candidate, error) { return ready[0], nil })
}

func TestRunPassesAConformingPolicy(t *testing.T) {
	Run(t, func() sdk.Policy { return first{} })
}

// validate is the kit's oracle: it must refuse every wrong decision.
func TestValidateRefuses(t *testing.T) {
	req := phases("r", "", map[string][]bool{"encoder": {true}, "transformer": {false, true}})
	for _, tc := range []struct {
		name    string
		choices map[string]string
		want    string
	}{
		{"not ready", map[string]string{"encoder": "encoder-0", "transformer": "transformer-0"}, `phase "transformer": chose transformer-0, which is not ready`},
		{"unknown", map[string]string{"encoder": "encoder-0", "transformer": "transformer-9"}, `phase "transformer": chose "transformer-9", not one of its candidates`},
		{"another phase's", map[string]string{"encoder": "transformer-1", "transformer": "transformer-1"}, `phase "encoder": chose "transformer-1", not one of its candidates`},
		{"missing phase", map[string]string{"encoder": "encoder-0"}, "1 choices for 2 phases"},
		{"extra phase", map[string]string{"encoder": "encoder-0", "transformer": "transformer-1", "decoder": "decoder-0"}, "3 choices for 2 phases"},
		{"renamed phase", map[string]string{"encoder": "encoder-0", "Transformer": "transformer-1"}, `no choice for phase "transformer"`},
	} {
		err := validate(req, sdk.Decision{Choices: tc.choices})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: validate = %v, want %q", tc.name, err, tc.want)
		}
	}
	if err := validate(req, sdk.Decision{Choices: map[string]string{"encoder": "encoder-0", "transformer": "transformer-1"}}); err != nil {
		t.Errorf("a right decision: %v", err)
	}
}

package scalertest

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/phased/phased/sdk"
)

// hold is the simplest conforming scaler: it changes nothing, and refuses
// any param.
type hold struct{}

func (hold) Info(context.Context) (sdk.Info, error) { return sdk.ScalerInfo("hold", "1"), nil }

func (hold) Scale(_ context.Context, req sdk.ScaleRequest) (sdk.ScaleDecision, error) {
	for k := range req.Params {
		return sdk.ScaleDecision{}, fmt.Errorf("hold: param %q is unknown", k)
	}
	return sdk.ScaleDecision{}, nil
}

func TestRunPassesAConformingScaler(t *testing.T) {
	Run(t, func() sdk.Scaler { return hold{} }, map[string]string{"x": "1"})
}

// Validate is the kit's oracle: it must refuse every wrong decision.
func TestValidateRefuses(t *testing.T) {
	req := Snapshots()[0]
	for _, tc := range []struct {
		targets map[string]int
		want    string
	}{
		{map[string]int{"transformer": 5}, `phase "transformer": target 5 out of its bounds 1 to 4`},
		{map[string]int{"transformer": 0}, `phase "transformer": target 0 out of its bounds 1 to 4`},
		{map[string]int{"encoder": 2}, `phase "encoder": target 2 out of its bounds 1 to 1`},
		{map[string]int{"Transformer": 2}, `a target for "Transformer", not a phase of the request`},
	} {
		if err := Validate(req, sdk.ScaleDecision{Targets: tc.targets}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.targets, err, tc.want)
		}
	}
	if err := Validate(req, sdk.ScaleDecision{Targets: map[string]int{"transformer": 4, "decoder": 2}}); err != nil {
		t.Errorf("a right decision: %v", err)
	}
}

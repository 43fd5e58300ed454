package threshold

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/scalertest"
)

func TestConformance(t *testing.T) {
	scalertest.Run(t, func() sdk.Scaler { return New() }, map[string]string{"out": "1.5"})
}

// TestRule: out by one above out, in by one below in, nothing between,
// within cooldown, without a ready instance, or past the bounds.
func TestRule(t *testing.T) {
	now := scalertest.At
	ph := func(n, ready int, util float64, scaled time.Duration) sdk.PhaseLoad {
		p := sdk.PhaseLoad{Phase: "transformer", Instances: n, Ready: ready, Min: 1, Max: 3, Utilisation: util}
		if scaled > 0 {
			p.LastScaled = now.Add(-scaled)
		}
		return p
	}
	for _, tc := range []struct {
		name   string
		load   sdk.PhaseLoad
		params map[string]string
		want   map[string]int
	}{
		{"busy", ph(1, 1, 1, 0), nil, map[string]int{"transformer": 2}},
		{"busy at max", ph(3, 3, 1, 0), nil, map[string]int{}},
		{"idle", ph(3, 3, 0, time.Minute), nil, map[string]int{"transformer": 2}},
		{"idle at min", ph(1, 1, 0, 0), nil, map[string]int{}},
		{"between", ph(2, 2, 0.5, 0), nil, map[string]int{}},
		{"busy within cooldown", ph(1, 1, 1, 10*time.Second), nil, map[string]int{}},
		{"busy after a short cooldown", ph(1, 1, 1, 10*time.Second), map[string]string{"cooldown": "5s"}, map[string]int{"transformer": 2}},
		{"no ready instance", ph(2, 0, 0, 0), nil, map[string]int{}},
		{"lower out", ph(2, 2, 0.5, 0), map[string]string{"out": "0.4"}, map[string]int{"transformer": 3}},
	} {
		d, err := New().Scale(context.Background(), sdk.ScaleRequest{Now: now, Phases: []sdk.PhaseLoad{tc.load}, Params: tc.params})
		if err != nil || !maps.Equal(d.Targets, tc.want) {
			t.Errorf("%s: %v, %v; want %v", tc.name, d.Targets, err, tc.want)
		}
	}
	for _, tc := range []struct {
		params map[string]string
		want   string
	}{
		{map[string]string{"in": "0.9"}, "threshold: params: in = 0.9 must be below out = 0.8"},
		{map[string]string{"cooldown": "x"}, `threshold: params: cooldown = "x": want a duration, e.g. "30s"`},
		{map[string]string{"outt": "1"}, `threshold: param "outt" is unknown; the known params are cooldown, in, out`},
	} {
		if _, err := New().Scale(context.Background(), sdk.ScaleRequest{Now: now, Params: tc.params}); err == nil || err.Error() != tc.want {
			t.Errorf("%v: %v, want %q", tc.params, err, tc.want)
		}
	}
}

package queue

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/scalertest"
)

func TestConformance(t *testing.T) {
	scalertest.Run(t, func() sdk.Scaler { return New() }, map[string]string{"target_wait": "soon"})
}

// TestRule: out at once to what the work needs within target_wait, in by
// one after cooldown, nothing before the service time is known.
func TestRule(t *testing.T) {
	now := scalertest.At
	ph := func(n, inflight int, service, scaled time.Duration) sdk.PhaseLoad {
		p := sdk.PhaseLoad{Phase: "transformer", Instances: n, Ready: n, Min: 1, Max: 8, Inflight: inflight, Service: service}
		if scaled > 0 {
			p.LastScaled = now.Add(-scaled)
		}
		return p
	}
	for _, tc := range []struct {
		name  string
		depth int
		load  sdk.PhaseLoad
		want  map[string]int
	}{
		// 2 in flight + 10 queued, 5 s each: 60 s of work; within 10 s: 6.
		{"burst", 10, ph(1, 2, 5*time.Second, 0), map[string]int{"transformer": 6}},
		{"burst past max", 100, ph(1, 2, 5*time.Second, 0), map[string]int{"transformer": 8}},
		{"enough", 0, ph(2, 4, 5*time.Second, 0), map[string]int{}},
		{"idle", 0, ph(4, 0, 5*time.Second, time.Minute), map[string]int{"transformer": 3}},
		{"idle within cooldown", 0, ph(4, 0, 5*time.Second, time.Second), map[string]int{}},
		{"service unknown", 50, ph(1, 0, 0, 0), map[string]int{}},
	} {
		d, err := New().Scale(context.Background(), sdk.ScaleRequest{Now: now, QueueDepth: tc.depth, Phases: []sdk.PhaseLoad{tc.load}})
		if err != nil || !maps.Equal(d.Targets, tc.want) {
			t.Errorf("%s: %v, %v; want %v", tc.name, d.Targets, err, tc.want)
		}
	}
}

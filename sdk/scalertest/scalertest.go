// Package scalertest is the conformance kit for phased scaler plugins. A
// scaler author runs it from their own tests, against their
// implementation and against their built binary:
//
//	func TestConformance(t *testing.T) {
//		scalertest.Run(t, func() sdk.Scaler { return myscaler.New() })
//	}
//
//	func TestBinary(t *testing.T) {
//		scalertest.RunBinary(t, "bin/phased-scaler-myscaler") // built beforehand
//	}
//
// Run calls the scaler through the same gRPC layer the supervisor uses (in
// memory); RunBinary starts the binary as the supervisor does. Both check
// what the supervisor relies on:
//
//   - Info names a scaler (kind "scaler") that speaks sdk.ScalerAPIVersion,
//     and for a binary, by the NAME of its file phased-scaler-NAME;
//   - targets name only phases of the request, each within its min and
//     max, for loads from idle to overload, a phase without a ready
//     instance, and a phase whose min is its max;
//   - it keeps no state: the same snapshot gives the same targets, before
//     and after other snapshots, so that a restart or a swap changes
//     nothing;
//   - a bad param fails the call with an error that names it, and the
//     scaler serves the next call;
//   - concurrent calls are safe (run your tests with -race).
package scalertest

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/plugintest"
)

// Run checks the scaler that newScaler returns through the real gRPC
// layer, in memory. Each check gets a fresh scaler.
func Run(t *testing.T, newScaler func() sdk.Scaler, bad map[string]string) {
	t.Helper()
	check(t, "", bad, func(t *testing.T) sdk.Scaler { return plugintest.Scaler(t, newScaler()) })
}

// RunBinary checks the scaler plugin binary at path, started as the
// supervisor starts it; each check starts its own process. bad is a
// param set the scaler must refuse (nil: not checked).
func RunBinary(t *testing.T, path string, bad map[string]string) {
	t.Helper()
	check(t, plugintest.NameOf(path, sdk.KindScaler), bad, func(t *testing.T) sdk.Scaler {
		raw := plugintest.Start(t, path, sdk.KindScaler).Raw
		s, ok := raw.(sdk.Scaler)
		if !ok {
			t.Fatalf("scalertest: %s: dispensed %T, not a scaler", path, raw)
		}
		return s
	})
}

// timeout bounds every call: the supervisor gives a scaler its interval.
const timeout = 5 * time.Second

func check(t *testing.T, name string, bad map[string]string, start func(t *testing.T) sdk.Scaler) {
	t.Run("Info", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		info, err := start(t).Info(ctx)
		if err != nil {
			t.Fatalf("Info: %v", err)
		}
		plugintest.CheckInfo(t, info, sdk.KindScaler, name)
	})
	t.Run("TargetsWithinBounds", func(t *testing.T) {
		s := start(t)
		for _, req := range Snapshots() {
			if _, err := call(s, req); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("Stateless", func(t *testing.T) {
		s := start(t)
		snaps := Snapshots()
		first := make([]map[string]int, len(snaps))
		for i, req := range snaps {
			d, err := call(s, req)
			if err != nil {
				t.Fatal(err)
			}
			first[i] = d.Targets
		}
		for i := len(snaps) - 1; i >= 0; i-- {
			d, err := call(s, snaps[i])
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(d.Targets, first[i]) {
				t.Errorf("snapshot %d (%s): targets %v, then %v after other snapshots: a scaler keeps no state", i, describe(snaps[i]), first[i], d.Targets)
			}
		}
	})
	if bad != nil {
		t.Run("BadParams", func(t *testing.T) {
			s := start(t)
			req := Snapshots()[1]
			req.Params = bad
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			_, err := s.Scale(ctx, req)
			switch {
			case err == nil:
				t.Errorf("params %v: no error", bad)
			case !namesOne(err.Error(), bad):
				t.Errorf("params %v: error %q names none of them", bad, err)
			}
			if _, err := call(s, Snapshots()[1]); err != nil {
				t.Errorf("the call after a bad one: %v", err)
			}
		})
	}
	t.Run("Concurrent", func(t *testing.T) {
		s := start(t)
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 64 {
			req := Snapshots()[i%len(Snapshots())]
			wg.Go(func() {
				if _, err := call(s, req); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func namesOne(msg string, params map[string]string) bool {
	for k := range params {
		if strings.Contains(msg, k) {
			return true
		}
	}
	return false
}

// call calls Scale and checks the decision against the request.
func call(s sdk.Scaler, req sdk.ScaleRequest) (sdk.ScaleDecision, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d, err := s.Scale(ctx, req)
	if err != nil {
		return d, fmt.Errorf("%s: %w", describe(req), err)
	}
	return d, Validate(req, d)
}

// Validate checks a decision against its request: targets only for the
// request's phases, each within the phase's min and max.
func Validate(req sdk.ScaleRequest, d sdk.ScaleDecision) error {
	bounds := map[string]sdk.PhaseLoad{}
	for _, ph := range req.Phases {
		bounds[ph.Phase] = ph
	}
	for phase, n := range d.Targets {
		ph, ok := bounds[phase]
		switch {
		case !ok:
			return fmt.Errorf("%s: a target for %q, not a phase of the request", describe(req), phase)
		case n < ph.Min || n > ph.Max:
			return fmt.Errorf("%s: phase %q: target %d out of its bounds %d to %d", describe(req), phase, n, ph.Min, ph.Max)
		}
	}
	return nil
}

// At is the instant of the kit's snapshots.
var At = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// Snapshots returns the loads the kit calls a scaler with: idle, busy,
// overloaded with a queue, just scaled (a cooldown), a phase without a
// ready instance, and a phase whose min is its max.
func Snapshots() []sdk.ScaleRequest {
	load := func(phase string, n, ready, lo, hi, inflight int, service time.Duration, scaled time.Duration) sdk.PhaseLoad {
		u := 0.0
		if ready > 0 {
			u = float64(min(inflight, ready)) / float64(ready)
		}
		pl := sdk.PhaseLoad{Phase: phase, Instances: n, Ready: ready, Min: lo, Max: hi, Inflight: inflight, Utilisation: u,
			Service: service, States: map[string]int{"ready": ready, "starting": n - ready}}
		if scaled > 0 {
			pl.LastScaled = At.Add(-scaled)
		}
		return pl
	}
	req := func(depth int, wait time.Duration, phases ...sdk.PhaseLoad) sdk.ScaleRequest {
		return sdk.ScaleRequest{Now: At, QueueDepth: depth, QueueWait: wait, MaxInflight: 64, Phases: phases}
	}
	return []sdk.ScaleRequest{
		req(0, 0, load("encoder", 1, 1, 1, 1, 0, 0, 0), load("transformer", 2, 2, 1, 4, 0, 0, 0), load("decoder", 1, 1, 1, 2, 0, 0, 0)),
		req(0, 0, load("encoder", 1, 1, 1, 1, 1, 50*time.Millisecond, 0), load("transformer", 2, 2, 1, 4, 2, 5*time.Second, time.Hour), load("decoder", 1, 1, 1, 2, 1, time.Second, 0)),
		req(40, 30*time.Second, load("encoder", 1, 1, 1, 1, 1, 50*time.Millisecond, 0), load("transformer", 4, 4, 1, 4, 8, 5*time.Second, time.Minute), load("decoder", 2, 2, 1, 2, 2, time.Second, 0)),
		req(10, 5*time.Second, load("transformer", 3, 3, 1, 4, 3, 2*time.Second, time.Second)),
		req(5, time.Second, load("transformer", 2, 0, 1, 4, 0, 2*time.Second, 0)),
		req(100, time.Minute, load("transformer", 3, 3, 3, 3, 3, 2*time.Second, 0)),
		req(0, 0),
	}
}

func describe(req sdk.ScaleRequest) string {
	var parts []string
	for _, ph := range req.Phases {
		parts = append(parts, fmt.Sprintf("%s %d/%d ready, %d in flight, bounds %d-%d", ph.Phase, ph.Ready, ph.Instances, ph.Inflight, ph.Min, ph.Max))
	}
	return fmt.Sprintf("queue %d (%v) [%s]", req.QueueDepth, req.QueueWait, strings.Join(parts, "; "))
}

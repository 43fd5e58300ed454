package supervisor

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/phased/phased/supervisor/config"
)

// TestRestartJitter: jitter takes up to its fraction off each backoff, so
// slots that died together do not start again in step.
func TestRestartJitter(t *testing.T) {
	rule := config.Restart{Max: 10, Window: time.Minute, Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, Jitter: 0.5}
	for _, tt := range []struct {
		u    float64
		want []time.Duration
	}{
		{0, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}},
		{0.5, []time.Duration{75 * time.Millisecond, 150 * time.Millisecond, 300 * time.Millisecond}},
		{0.999, []time.Duration{50050 * time.Microsecond, 100100 * time.Microsecond, 200200 * time.Microsecond}},
	} {
		r := newRestarter(rule)
		r.jitter = func() float64 { return tt.u }
		for i, want := range tt.want {
			if got, ok := r.next(time.Unix(1000, 0)); !ok || got != want {
				t.Errorf("u=%g, restart %d: %s, %v; want %s", tt.u, i, got, ok, want)
			}
		}
	}
	// The default source stays within the bounds.
	r := newRestarter(rule)
	for range 100 {
		r.restarts = nil
		if d, _ := r.next(time.Unix(1000, 0)); d <= 50*time.Millisecond || d > 100*time.Millisecond {
			t.Fatalf("first backoff %s with jitter 0.5; want in (50ms, 100ms]", d)
		}
	}
}

// TestRestartRun: run starts again until a start succeeds, gives up after
// Max failed starts in a row or Max restarts within the window, and stops
// when its context ends.
func TestRestartRun(t *testing.T) {
	rule := config.Restart{Max: 3, Window: time.Hour, Backoff: time.Millisecond, MaxBackoff: time.Millisecond}
	ctx := context.Background()
	boom := errors.New("no weights")

	r := newRestarter(rule)
	calls, failures := 0, 0
	start := func(context.Context) error {
		if calls++; calls < 3 {
			return boom
		}
		return nil
	}
	if err := r.run(ctx, 0, start, func(err error) { failures++ }); err != nil || calls != 3 || failures != 2 {
		t.Fatalf("run: %v after %d starts and %d failures; want nil after 3 and 2", err, calls, failures)
	}
	if r.failures != 0 {
		t.Errorf("failures in a row after a start: %d", r.failures)
	}

	// Max failed starts in a row give up, though the window allows more.
	r = newRestarter(config.Restart{Max: 2, Window: time.Nanosecond, Backoff: time.Millisecond, MaxBackoff: time.Millisecond})
	calls = 0
	err := r.run(ctx, 0, func(context.Context) error { calls++; return boom }, func(error) {})
	if !errors.Is(err, errGaveUp) || calls != 2 || err.Error() != "too many restarts: 2 failed starts in a row" {
		t.Fatalf("run with every start failing: %v after %d starts", err, calls)
	}

	// Max restarts within the window give up.
	r = newRestarter(rule)
	for range 2 {
		r.next(time.Now())
	}
	calls = 0
	err = r.run(ctx, 0, func(context.Context) error { calls++; return boom }, func(error) {})
	if !errors.Is(err, errGaveUp) || calls != 2 || err.Error() != fmt.Sprintf("too many restarts: 3 within %s", time.Hour) {
		t.Fatalf("run past the window's restarts: %v after %d starts", err, calls)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := newRestarter(rule).run(cctx, time.Hour, start, func(error) {}); !errors.Is(err, context.Canceled) {
		t.Fatalf("run with its context ended: %v", err)
	}
}

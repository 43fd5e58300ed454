package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/phased/phased/supervisor/config"
)

// restarter applies one restart rule (config.Restart, systemd's
// StartLimitBurst and StartLimitIntervalSec with a doubling backoff) to one
// slot that a plugin process fills: a phase instance or a policy. The
// instances and the policies restart through it alike:
//
//   - after an exit, the next start waits a backoff that doubles with
//     each restart within the window, from Backoff up to MaxBackoff, less a
//     random part of up to Jitter of it, so that slots that died together
//     do not all start again at once;
//   - past Max restarts within Window the slot is given up;
//   - a start that fails counts as an exit, and Max failed starts in a row
//     give up too (a start that fails slowly, a model that loads for
//     minutes and crashes, may never reach Max within the window).
type restarter struct {
	rule   config.Restart
	jitter func() float64 // uniform in [0, 1); nil is math/rand

	mu       sync.Mutex
	restarts []time.Time // restarts within the window, oldest first
	total    int         // restarts since the supervisor started
	failures int         // starts that failed in a row
}

func newRestarter(rule config.Restart) *restarter { return &restarter{rule: rule} }

// errGaveUp is wrapped by restarter.run's error when the rule gave up.
var errGaveUp = errors.New("too many restarts")

// next records a restart at now and returns the backoff before it, or
// false when the slot has had Max restarts within Window.
func (r *restarter) next(now time.Time) (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rule := r.rule
	kept := r.restarts[:0]
	for _, t := range r.restarts {
		if now.Sub(t) < rule.Window {
			kept = append(kept, t)
		}
	}
	r.restarts = kept
	if len(kept) >= rule.Max {
		return 0, false
	}
	r.restarts = append(r.restarts, now)
	r.total++
	delay := rule.Backoff
	for range len(kept) {
		if delay *= 2; delay >= rule.MaxBackoff {
			break
		}
	}
	delay = min(delay, rule.MaxBackoff)
	if rule.Jitter > 0 {
		u := rand.Float64
		if r.jitter != nil {
			u = r.jitter
		}
		delay -= time.Duration(rule.Jitter * u() * float64(delay))
	}
	return delay, true
}

// reset forgets the restarts within the window and the failed starts in a
// row: the slot starts over (the total stays).
func (r *restarter) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restarts, r.failures = nil, 0
}

// counts returns the restarts since the supervisor started.
func (r *restarter) counts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// run starts the slot again: it waits delay (from next), calls start, and
// while starts fail and the rule allows, waits the next backoff and
// tries again; failed hears of each failed start. It returns nil once a
// start succeeded, an error wrapping errGaveUp when the rule gave up, or
// ctx's error when ctx ended (the supervisor is releasing).
func (r *restarter) run(ctx context.Context, delay time.Duration, start func(context.Context) error, failed func(error)) error {
	for {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		err := start(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.mu.Lock()
		if err == nil {
			r.failures = 0
			r.mu.Unlock()
			return nil
		}
		r.failures++
		inARow := r.failures
		r.mu.Unlock()
		failed(err)
		var ok bool
		delay, ok = r.next(time.Now())
		switch {
		case !ok:
			return fmt.Errorf("%w: %d within %s", errGaveUp, r.rule.Max, r.rule.Window)
		case inARow >= r.rule.Max:
			return fmt.Errorf("%w: %d failed starts in a row", errGaveUp, inARow)
		}
	}
}

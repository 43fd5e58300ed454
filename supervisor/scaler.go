package supervisor

// Autoscaling: a scaler plugin (phased-scaler-NAME), called every
// interval with a snapshot of the load, returns each phase's instance
// count, which Scale applies. Like a policy, a scaler is swapped live
// (make before break: the new one must answer a trial call), restarted
// by the restart rule when it crashes or hangs, and while none answers
// the counts stay as they are.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// scaler is the running scaler plugin process.
type scaler struct {
	name    string
	path    string
	params  map[string]string
	restart *restarter

	mu       sync.Mutex
	proc     *process // nil while restarting
	impl     sdk.Scaler
	state    string // policyRunning, policyRestarting, policyFailed, policyStopped
	lastErr  string
	calls    int64
	last     map[string]int // the last decision's targets
	lastCall time.Time
}

// scalerLoad is what the scale loop remembers of a phase between ticks.
type scalerLoad struct {
	lastScaled atomic.Int64 // unix ns of its last count change; 0: none
	steps      atomic.Int64 // steps reported, all time
	busy       atomic.Bool  // a scaling the scaler asked for is under way
}

// startScaler starts scaler plugin name with params.
func (s *Supervisor) startScaler(ctx context.Context, name string, params map[string]string) (*scaler, error) {
	path, err := s.catalog.Find(sdk.KindScaler, name)
	if err != nil {
		return nil, err
	}
	proc, err := s.startScalerProcess(ctx, name, path)
	if err != nil {
		return nil, err
	}
	return &scaler{name: name, path: path, params: params, restart: newRestarter(s.cfg.Restart), proc: proc, impl: proc.raw.(sdk.Scaler), state: policyRunning}, nil
}

func (s *Supervisor) startScalerProcess(ctx context.Context, name, path string) (*process, error) {
	return s.start(ctx, processConfig{
		Name: "scaler-" + name, Path: path, Kind: sdk.KindScaler,
		APIVersion: sdk.ScalerAPIVersion, StartTimeout: config.DefaultStartTimeout,
		CPUs: policyCPUs,
	})
}

// scaleSnapshot is the load the scaler is called with.
func (s *Supervisor) scaleSnapshot(now time.Time, params map[string]string, interval time.Duration) sdk.ScaleRequest {
	depth, oldest := s.queue.waiting(now)
	req := sdk.ScaleRequest{Now: now, QueueDepth: depth, QueueWait: oldest, MaxInflight: s.queue.slots, Params: params}
	for _, ph := range s.phases {
		pl := sdk.PhaseLoad{Phase: ph.cfg.Name, Min: ph.cfg.Min, Max: ph.cfg.Max, States: map[string]int{}}
		busy := 0
		var service float64
		for _, in := range ph.all() {
			st := in.currentState()
			pl.States[st]++
			pl.Instances++
			n := int(in.inflight.Load())
			pl.Inflight += n
			if st == stateReady {
				pl.Ready++
				if n > 0 {
					busy++
				}
				if ms := in.latencyMs(); ms > 0 {
					service = max(service, ms)
				}
			}
		}
		if pl.Ready > 0 {
			pl.Utilisation = float64(busy) / float64(pl.Ready)
		}
		pl.Service = time.Duration(service * float64(time.Millisecond))
		if ns := ph.load.lastScaled.Load(); ns != 0 {
			pl.LastScaled = time.Unix(0, ns)
		}
		// The loop's calls measure the rate; a trial call (interval 0)
		// leaves its baseline alone.
		if interval > 0 {
			steps := ph.load.steps.Load()
			pl.StepsPerSecond = float64(steps-ph.stepsSeen.Swap(steps)) / interval.Seconds()
		}
		req.Phases = append(req.Phases, pl)
	}
	return req
}

// scaleLoop calls the scaler every interval, until release.
func (s *Supervisor) scaleLoop(interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-s.bgCtx.Done():
			return
		case <-tick.C:
		}
		s.scalerMu.Lock()
		sc := s.scaler
		s.scalerMu.Unlock()
		if sc == nil {
			continue
		}
		d, err := s.callScaler(sc, s.scaleSnapshot(time.Now(), sc.params, interval), interval)
		if err != nil {
			s.logger.Warn("scaler", "scaler", sc.name, "error", err)
			continue
		}
		s.applyScale(sc, d)
	}
}

// callScaler calls a scaler within timeout; a scaler whose process has
// exited, or that does not answer in time, is restarted.
func (s *Supervisor) callScaler(sc *scaler, req sdk.ScaleRequest, timeout time.Duration) (sdk.ScaleDecision, error) {
	sc.mu.Lock()
	impl, state := sc.impl, sc.state
	sc.mu.Unlock()
	if state != policyRunning {
		return sdk.ScaleDecision{}, fmt.Errorf("scaler %s is %s", sc.name, state)
	}
	ctx, cancel := context.WithTimeout(s.bgCtx, timeout)
	defer cancel()
	d, err := impl.Scale(ctx, req)
	sc.mu.Lock()
	sc.calls++
	sc.lastCall = time.Now()
	if err != nil {
		sc.lastErr = err.Error()
	} else {
		sc.last, sc.lastErr = d.Targets, ""
	}
	crashed := sc.proc != nil && sc.proc.exited() || errors.Is(err, sdk.ErrPluginGone)
	sc.mu.Unlock()
	if err != nil && s.bgCtx.Err() == nil {
		hung := timedOut(ctx, err)
		if hung {
			err = fmt.Errorf("scaler %s did not answer within %s (its interval): %w", sc.name, timeout, err)
		}
		if hung || crashed {
			s.restartScaler(sc, impl, err)
		}
	}
	return d, err
}

// applyScale scales the phases whose target differs from their count,
// each in the background, one scaling of a phase at a time.
func (s *Supervisor) applyScale(sc *scaler, d sdk.ScaleDecision) {
	for name, n := range d.Targets {
		ph, err := s.phaseNamed(name)
		if err != nil {
			s.logger.Warn("scaler: a target for no phase of the pipeline", "scaler", sc.name, "phase", name)
			continue
		}
		n = min(max(n, ph.cfg.Min), ph.cfg.Max)
		if s.cluster != nil {
			n = max(n, s.floor(ph)) // what scaling cannot retire stays
		}
		if n == len(ph.all()) || !ph.load.busy.CompareAndSwap(false, true) {
			continue
		}
		ok := s.background(func() {
			defer ph.load.busy.Store(false)
			if _, err := s.Scale(s.bgCtx, name, n); err != nil && s.bgCtx.Err() == nil {
				s.logger.Warn("scaling a phase as the scaler asked", "scaler", sc.name, "phase", name, "to", n, "error", err)
			}
		})
		if !ok {
			ph.load.busy.Store(false)
		}
	}
}

// restartScaler restarts a scaler whose process failed (once per
// failure of one process), by the config's restart rule; past it, the
// scaler is left failed and the counts stay as they are.
func (s *Supervisor) restartScaler(sc *scaler, failed sdk.Scaler, cause error) {
	sc.mu.Lock()
	if sc.impl != failed || sc.state != policyRunning {
		sc.mu.Unlock()
		return
	}
	old := sc.proc
	delay, ok := sc.restart.next(time.Now())
	sc.state, sc.proc, sc.lastErr = policyRestarting, nil, cause.Error()
	if !ok {
		sc.state = policyFailed
	}
	sc.mu.Unlock()
	s.logger.Error("scaler plugin failed", "scaler", sc.name, "error", cause, "restarting", ok)
	restart := func() {
		if old != nil {
			old.kill()
		}
		if !ok {
			return
		}
		start := func(ctx context.Context) error {
			proc, err := s.startScalerProcess(ctx, sc.name, sc.path)
			if err != nil {
				return err
			}
			sc.mu.Lock()
			defer sc.mu.Unlock()
			if ctx.Err() != nil || sc.state != policyRestarting {
				proc.kill() // released or swapped meanwhile
				return nil
			}
			sc.proc, sc.impl, sc.state = proc, proc.raw.(sdk.Scaler), policyRunning
			s.logger.Info("scaler plugin restarted", "scaler", sc.name, "pid", proc.pid)
			return nil
		}
		note := func(err error) {
			sc.mu.Lock()
			sc.lastErr = err.Error()
			sc.mu.Unlock()
		}
		if err := sc.restart.run(s.bgCtx, delay, start, note); errors.Is(err, errGaveUp) {
			sc.mu.Lock()
			if sc.state == policyRestarting {
				sc.state = policyFailed
			}
			sc.mu.Unlock()
			s.logger.Error("scaler plugin failed; not restarting it: the instance counts stay as they are", "scaler", sc.name, "why", err)
		}
	}
	if !s.background(restart) && old != nil {
		old.kill()
	}
}

// stop stops a scaler's process.
func (sc *scaler) stop() {
	sc.mu.Lock()
	proc := sc.proc
	sc.state, sc.proc = policyStopped, nil
	sc.mu.Unlock()
	if proc != nil {
		proc.kill()
	}
}

// SetScaler makes scaler plugin name the autoscaler, with params, make
// before break: it is started and must answer a trial call with a valid
// decision (which is not applied) before it replaces the scaler before
// it, whose process is then stopped. An empty name turns autoscaling
// off. The change lasts until the supervisor stops: put it in the config
// to keep it.
func (s *Supervisor) SetScaler(ctx context.Context, name string, params map[string]string) error {
	s.mu.Lock()
	running := s.started && !s.closing
	s.mu.Unlock()
	if !running {
		return ErrReleasing
	}
	s.scalerChange.Lock()
	defer s.scalerChange.Unlock()
	var sc *scaler
	if name != "" {
		var err error
		if sc, err = s.startScaler(ctx, name, params); err != nil {
			return fmt.Errorf("scaler set %s: %w", name, err)
		}
		trial := s.scaleSnapshot(time.Now(), params, 0)
		d, err := s.callScaler(sc, trial, max(s.cfg.Scaler.Interval, config.DefaultScalerInterval))
		if err == nil {
			err = checkTargets(s, d)
		}
		if err != nil {
			sc.stop()
			return fmt.Errorf("scaler set %s: the trial call failed, %s stays: %w", name, s.scalerName(), err)
		}
	}
	s.scalerMu.Lock()
	old := s.scaler
	if s.scalersStopped {
		s.scalerMu.Unlock()
		if sc != nil {
			sc.stop()
		}
		return ErrReleasing
	}
	s.scaler = sc
	s.scalerMu.Unlock()
	if old != nil {
		old.stop()
	}
	s.logger.Info("scaler set", "scaler", name, "was", nameOf(old))
	return nil
}

// checkTargets checks a scaler's decision names phases of the pipeline.
func checkTargets(s *Supervisor, d sdk.ScaleDecision) error {
	for name := range d.Targets {
		if _, err := s.phaseNamed(name); err != nil {
			return fmt.Errorf("it returned a target for %w", err)
		}
	}
	return nil
}

func nameOf(sc *scaler) string {
	if sc == nil {
		return ""
	}
	return sc.name
}

// scalerName is the current scaler's name, "none" without one.
func (s *Supervisor) scalerName() string {
	s.scalerMu.Lock()
	defer s.scalerMu.Unlock()
	if s.scaler == nil {
		return "none"
	}
	return s.scaler.name
}

// ScalerList is what `supervisor scaler list` shows.
type ScalerList struct {
	// Scaler is the autoscaler now; nil: none.
	Scaler *ScalerProc `json:"scaler,omitempty"`
	// Interval is how often it is called.
	Interval string `json:"interval"`
	// Phases are each phase's count and bounds.
	Phases []ScaledPhase `json:"phases"`
	// Available are the scaler binaries in the plugin directory.
	Available []string `json:"available"`
}

// ScalerProc is the scaler plugin process and what it last said.
type ScalerProc struct {
	Name      string            `json:"name"`
	PID       int               `json:"pid,omitempty"`
	State     string            `json:"state"`
	Restarts  int               `json:"restarts"`
	Params    map[string]string `json:"params,omitempty"`
	Calls     int64             `json:"calls"`
	LastCall  *time.Time        `json:"last_call,omitempty"`
	Targets   map[string]int    `json:"targets,omitempty"` // of the last call that answered
	LastError string            `json:"last_error,omitempty"`
}

// ScaledPhase is one phase's count, bounds and last scaling.
type ScaledPhase struct {
	Phase      string     `json:"phase"`
	Instances  int        `json:"instances"`
	Min        int        `json:"min"`
	Max        int        `json:"max"`
	LastScaled *time.Time `json:"last_scaled,omitempty"`
}

// Scalers returns the autoscaler, the phases' counts and the scalers on
// offer.
func (s *Supervisor) Scalers() ScalerList {
	l := ScalerList{Interval: cmp.Or(s.cfg.Scaler.Interval, config.DefaultScalerInterval).String(), Phases: []ScaledPhase{}}
	s.scalerMu.Lock()
	sc := s.scaler
	s.scalerMu.Unlock()
	if sc != nil {
		sc.mu.Lock()
		p := &ScalerProc{Name: sc.name, State: sc.state, Restarts: sc.restart.counts(), Params: sc.params, Calls: sc.calls, Targets: sc.last, LastError: sc.lastErr}
		if sc.proc != nil {
			p.PID = sc.proc.pid
		}
		if !sc.lastCall.IsZero() {
			t := sc.lastCall
			p.LastCall = &t
		}
		sc.mu.Unlock()
		l.Scaler = p
	}
	for _, ph := range s.phases {
		sp := ScaledPhase{Phase: ph.cfg.Name, Instances: len(ph.all()), Min: ph.cfg.Min, Max: ph.cfg.Max}
		if ns := ph.load.lastScaled.Load(); ns != 0 {
			t := time.Unix(0, ns)
			sp.LastScaled = &t
		}
		l.Phases = append(l.Phases, sp)
	}
	l.Available = append([]string{}, s.catalog.List(sdk.KindScaler)...)
	return l
}

// stopScaler stops the scaler at release; none starts after.
func (s *Supervisor) stopScaler() {
	s.scalerMu.Lock()
	sc := s.scaler
	s.scaler, s.scalersStopped = nil, true
	s.scalerMu.Unlock()
	if sc != nil {
		sc.stop()
	}
}

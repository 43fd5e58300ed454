package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// Policy process states, as status and `policy list` show them.
const (
	policyRunning    = "running"
	policyRestarting = "restarting"
	policyFailed     = "failed" // too many restarts: given up; the fallback schedules
	policyStopped    = "stopped"
)

// policy is one policy plugin process, shared by the phases that use it,
// live or as a shadow. When it crashes or hangs, the phases fall back to
// the built-in round robin and it is restarted by the config's restart
// rule, as instances are.
type policy struct {
	name    string
	path    string
	restart *restarter

	mu      sync.Mutex
	proc    *process // nil while restarting
	impl    sdk.Policy
	state   string
	lastErr string
}

// current returns the policy's client while its process runs, and its
// state.
func (p *policy) current() (sdk.Policy, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.impl, p.state
}

// policyStats counts what happened to one phase's scheduling decisions.
type policyStats struct {
	decisions    atomic.Int64 // requests scheduled
	fallbacks    atomic.Int64 // of which by the built-in round robin
	shadowCalls  atomic.Int64 // shadow decisions received
	shadowAgree  atomic.Int64 // of which equal to the live decision
	shadowErrors atomic.Int64 // shadow calls that failed
}

// startPolicy starts the process of policy name from the catalog.
func (s *Supervisor) startPolicy(ctx context.Context, name string) (*policy, error) {
	path, err := s.catalog.Find(sdk.KindPolicy, name)
	if err != nil {
		return nil, err
	}
	proc, err := s.startPolicyProcess(ctx, name, path)
	if err != nil {
		return nil, err
	}
	return &policy{name: name, path: path, restart: newRestarter(s.cfg.Restart), proc: proc, impl: proc.raw.(sdk.Policy), state: policyRunning}, nil
}

func (s *Supervisor) startPolicyProcess(ctx context.Context, name, path string) (*process, error) {
	return s.start(ctx, processConfig{
		Name: "policy-" + name, Path: path, Kind: sdk.KindPolicy,
		APIVersion: sdk.PolicyAPIVersion, StartTimeout: config.DefaultStartTimeout,
		CPUs: policyCPUs,
	})
}

// policyCPUs is how many CPUs a policy process runs on: a decision is
// one short computation, one at a time.
const policyCPUs = 1

// callPolicy calls a policy's Schedule with the policy timeout. When the
// process has exited, or does not answer in time, it is restarted.
func (s *Supervisor) callPolicy(ctx context.Context, p *policy, req sdk.ScheduleRequest) (sdk.Decision, error) {
	impl, state := p.current()
	if state != policyRunning {
		return sdk.Decision{}, fmt.Errorf("policy %s is %s", p.name, state)
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.PolicyTimeout)
	defer cancel()
	start := time.Now()
	d, err := impl.Schedule(cctx, req)
	s.metrics.decisionTime.WithLabelValues(p.name).Observe(time.Since(start).Seconds())
	if err != nil && ctx.Err() == nil {
		// Past the deadline: hung.
		hung := timedOut(cctx, err)
		if hung {
			err = fmt.Errorf("policy %s did not answer within %v (policy_timeout): %w", p.name, s.cfg.PolicyTimeout, err)
		}
		// A broken connection (the process died; go-plugin may not have
		// reaped it yet) or an exited process: a crash.
		p.mu.Lock()
		crashed := p.proc != nil && p.proc.exited() || errors.Is(err, sdk.ErrPluginGone)
		p.mu.Unlock()
		if hung || crashed {
			s.restartPolicy(p, impl, err)
		}
	}
	return d, err
}

// restartPolicy marks a policy as restarting (once: a second failure of
// the same process does nothing), kills the old process and starts it
// again by the config's restart rule; past the rule, it is left failed and
// the built-in round robin schedules its phases.
func (s *Supervisor) restartPolicy(p *policy, failed sdk.Policy, cause error) {
	p.mu.Lock()
	if p.impl != failed || p.state != policyRunning {
		p.mu.Unlock()
		return
	}
	old := p.proc
	delay, ok := p.restart.next(time.Now())
	p.state, p.proc, p.lastErr = policyRestarting, nil, cause.Error()
	if !ok {
		p.state = policyFailed
	}
	p.mu.Unlock()
	s.logger.Error("policy plugin failed", "policy", p.name, "error", cause, "restarting", ok)
	restart := func() {
		if old != nil {
			old.kill()
		}
		if ok {
			s.restartPolicyProcess(p, delay)
		}
	}
	if !s.background(restart) && old != nil {
		old.kill() // released meanwhile: nothing to restart
	}
}

// restartPolicyProcess starts a policy's process again after delay, by
// the restart rule.
func (s *Supervisor) restartPolicyProcess(p *policy, delay time.Duration) {
	start := func(ctx context.Context) error {
		if _, state := p.current(); state != policyRestarting {
			return nil // dropped meanwhile: nothing to restart
		}
		proc, err := s.startPolicyProcess(ctx, p.name, p.path)
		if err != nil {
			return err
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if ctx.Err() != nil || p.state != policyRestarting {
			proc.kill() // released or dropped meanwhile
			return nil
		}
		p.proc, p.impl, p.state = proc, proc.raw.(sdk.Policy), policyRunning
		s.logger.Info("policy plugin restarted", "policy", p.name, "pid", proc.pid)
		return nil
	}
	failed := func(err error) {
		p.mu.Lock()
		p.lastErr = err.Error()
		p.mu.Unlock()
		s.logger.Error("restart policy plugin", "policy", p.name, "error", err)
	}
	if err := p.restart.run(s.bgCtx, delay, start, failed); errors.Is(err, errGaveUp) {
		p.mu.Lock()
		if p.state == policyRestarting {
			p.state = policyFailed
		}
		p.mu.Unlock()
		s.logger.Error("policy plugin failed; not restarting it: the built-in round robin schedules its phases", "policy", p.name, "why", err)
	}
}

// acquirePolicy returns the policy name, starting its process if no phase
// uses it yet; started says so. The caller holds changeMu; the start and
// its handshake run without policyMu, so that status is not kept waiting.
func (s *Supervisor) acquirePolicy(ctx context.Context, name string) (p *policy, started bool, err error) {
	s.policyMu.Lock()
	p, stopped := s.policies[name], s.policiesStopped
	s.policyMu.Unlock()
	switch {
	case stopped:
		return nil, false, ErrReleasing
	case p != nil:
		return p, false, s.revive(ctx, p)
	}
	if p, err = s.startPolicy(ctx, name); err != nil {
		return nil, false, err
	}
	s.policyMu.Lock()
	stopped = s.policiesStopped
	if !stopped {
		s.policies[name] = p
	}
	s.policyMu.Unlock()
	if stopped { // released while it started
		p.proc.kill()
		return nil, false, ErrReleasing
	}
	return p, true, nil
}

// revive starts a policy that its restart rule gave up on again, with a
// fresh count of restarts: a user naming it asks for it. Any other policy
// is left as it is.
func (s *Supervisor) revive(ctx context.Context, p *policy) error {
	if _, state := p.current(); state != policyFailed {
		return nil
	}
	proc, err := s.startPolicyProcess(ctx, p.name, p.path)
	if err != nil {
		return err
	}
	p.mu.Lock()
	revived := p.state == policyFailed
	if revived {
		p.proc, p.impl, p.state = proc, proc.raw.(sdk.Policy), policyRunning
		p.restart.reset()
	}
	p.mu.Unlock()
	if !revived { // released or revived meanwhile
		proc.kill()
		return nil
	}
	s.logger.Info("policy plugin started again", "policy", p.name, "pid", proc.pid)
	return nil
}

// dropIfUnused stops a policy that no phase uses any more, live or as a
// shadow. The caller holds policyMu.
func (s *Supervisor) dropIfUnused(p *policy) {
	if p == nil || s.policies[p.name] != p {
		return
	}
	for _, ph := range s.phases {
		if ph.live.Load() == p || ph.shadowOf.Load() == p {
			return
		}
	}
	delete(s.policies, p.name)
	p.mu.Lock()
	proc := p.proc
	p.state, p.proc = policyStopped, nil
	p.mu.Unlock()
	s.logger.Info("policy plugin stopped: no phase uses it", "policy", p.name)
	if proc != nil && !s.background(proc.kill) {
		proc.kill()
	}
}

// SetPolicy makes policy name the live policy of a phase, make before
// break: the new policy's process is started (or shared with another phase
// that uses it), it must answer a trial Schedule with a ready instance of
// the phase, and only then does it replace the old one, between two
// scheduling decisions. Requests already scheduled keep their instances.
// The old policy's process stops once no phase uses it. The change lasts
// until the supervisor stops: put it in the config to keep it.
func (s *Supervisor) SetPolicy(ctx context.Context, phaseName, name string) error {
	ph, err := s.changeablePhase(phaseName)
	if err != nil {
		return err
	}
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	p, started, err := s.acquirePolicy(ctx, name)
	if err != nil {
		return fmt.Errorf("policy set %s %s: %w", phaseName, name, err)
	}
	// The trial places nothing: instances at their credits count.
	trial := sdk.ScheduleRequest{RequestID: "trial", Phases: []sdk.PhaseCandidates{ph.candidatesFor(false)}}
	d, err := s.callPolicy(ctx, p, trial)
	if err == nil {
		_, err = ph.member(name, d.Choices[ph.cfg.Name])
	}
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	if err != nil {
		if started {
			s.dropIfUnused(p)
		}
		return fmt.Errorf("policy set %s %s: the trial schedule failed, %s stays: %w", phaseName, name, ph.live.Load().name, err)
	}
	s.schedMu.Lock()
	old := ph.live.Swap(p)
	s.schedMu.Unlock()
	s.dropIfUnused(old)
	s.logger.Info("policy set", "phase", phaseName, "policy", name, "was", old.name)
	return nil
}

// SetShadow makes policy name the shadow of a phase: asked on every request
// beside the live one, its choices counted (agreement in status) but never
// used. An empty name removes the shadow.
func (s *Supervisor) SetShadow(ctx context.Context, phaseName, name string) error {
	ph, err := s.changeablePhase(phaseName)
	if err != nil {
		return err
	}
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	var p *policy
	if name != "" {
		if p, _, err = s.acquirePolicy(ctx, name); err != nil {
			return fmt.Errorf("policy shadow %s %s: %w", phaseName, name, err)
		}
	}
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	s.schedMu.Lock()
	old := ph.shadowOf.Swap(p)
	ph.stats.shadowCalls.Store(0)
	ph.stats.shadowAgree.Store(0)
	ph.stats.shadowErrors.Store(0)
	s.schedMu.Unlock()
	s.dropIfUnused(old)
	s.logger.Info("policy shadow set", "phase", phaseName, "shadow", name)
	return nil
}

// changeablePhase returns the phase whose policies a user changes, or why
// they cannot be changed: intake has stopped (or not started), or there is
// no such phase.
func (s *Supervisor) changeablePhase(name string) (*phase, error) {
	s.mu.Lock()
	running := s.started && !s.closing
	s.mu.Unlock()
	if !running {
		return nil, ErrReleasing
	}
	ph, err := s.phaseNamed(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	return ph, nil
}

// PolicyList is what `supervisor policy list` shows.
type PolicyList struct {
	Phases    []PhasePolicy `json:"phases"`
	Running   []PolicyProc  `json:"running"`
	Available []string      `json:"available"` // policy binaries in the plugin directory
}

// PhasePolicy is one phase's policies and what they did.
type PhasePolicy struct {
	Phase        string `json:"phase"`
	Policy       string `json:"policy"`
	Shadow       string `json:"shadow,omitempty"`
	Decisions    int64  `json:"decisions"`
	Fallbacks    int64  `json:"fallbacks"`
	ShadowCalls  int64  `json:"shadow_calls,omitempty"`
	ShadowAgree  int64  `json:"shadow_agree,omitempty"`
	ShadowErrors int64  `json:"shadow_errors,omitempty"`
}

// PolicyProc is one policy plugin process.
type PolicyProc struct {
	Name      string `json:"name"`
	PID       int    `json:"pid,omitempty"`
	State     string `json:"state"`
	Restarts  int    `json:"restarts"`
	LastError string `json:"last_error,omitempty"`
}

// Policies returns the phases' policies, the policy processes and the
// policies available in the plugin directory.
func (s *Supervisor) Policies() PolicyList {
	l := PolicyList{Phases: []PhasePolicy{}, Running: []PolicyProc{}}
	for _, ph := range s.phases {
		pp := PhasePolicy{
			Phase: ph.cfg.Name, Policy: ph.live.Load().name,
			Decisions: ph.stats.decisions.Load(), Fallbacks: ph.stats.fallbacks.Load(),
			ShadowCalls: ph.stats.shadowCalls.Load(), ShadowAgree: ph.stats.shadowAgree.Load(), ShadowErrors: ph.stats.shadowErrors.Load(),
		}
		if sh := ph.shadowOf.Load(); sh != nil {
			pp.Shadow = sh.name
		}
		l.Phases = append(l.Phases, pp)
	}
	s.policyMu.Lock()
	for _, p := range s.policies {
		p.mu.Lock()
		pr := PolicyProc{Name: p.name, State: p.state, Restarts: p.restart.counts(), LastError: p.lastErr}
		if p.proc != nil {
			pr.PID = p.proc.pid
		}
		p.mu.Unlock()
		l.Running = append(l.Running, pr)
	}
	s.policyMu.Unlock()
	slices.SortFunc(l.Running, func(a, b PolicyProc) int { return strings.Compare(a.Name, b.Name) })
	l.Available = append([]string{}, s.catalog.List(sdk.KindPolicy)...)
	return l
}

// stopPolicies stops the restarters and shadow calls, then every policy
// process.
func (s *Supervisor) stopPolicies() {
	s.stopBackground()
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	s.policiesStopped = true
	for name, p := range s.policies {
		p.mu.Lock()
		proc := p.proc
		p.state, p.proc = policyStopped, nil
		p.mu.Unlock()
		if proc != nil {
			proc.kill()
		}
		delete(s.policies, name)
	}
}

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phased/phased/policies/roundrobin"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// Policy process states, as status and `policy list` show them.
const (
	policyRunning    = "running"
	policyRestarting = "restarting"
	policyStopped    = "stopped"
)

// policy is one policy plugin process, shared by the phases that use it,
// live or as a shadow. When it crashes or hangs, the phases fall back to
// the built-in round robin and a restarter starts it again with backoff.
type policy struct {
	name string
	path string

	mu       sync.Mutex
	proc     *process // nil while restarting
	impl     sdk.Policy
	state    string
	restarts int
	lastErr  string
}

// current returns the policy's client while its process runs.
func (p *policy) current() (sdk.Policy, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.impl, p.state == policyRunning
}

// policyStats counts what happened to one phase's scheduling decisions.
type policyStats struct {
	decisions    atomic.Int64 // requests scheduled
	fallbacks    atomic.Int64 // of which by the built-in round robin
	shadowCalls  atomic.Int64 // shadow decisions received
	shadowAgree  atomic.Int64 // of which equal to the live decision
	shadowErrors atomic.Int64 // shadow calls that failed
}

// Restart backoff of a policy process: the first retry after
// policyBackoffMin, doubling up to policyBackoffMax.
const (
	policyBackoffMin = 100 * time.Millisecond
	policyBackoffMax = 30 * time.Second
)

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
	return &policy{name: name, path: path, proc: proc, impl: proc.raw.(sdk.Policy), state: policyRunning}, nil
}

func (s *Supervisor) startPolicyProcess(ctx context.Context, name, path string) (*process, error) {
	return s.start(ctx, processConfig{
		Name: "policy-" + name, Path: path, Kind: sdk.KindPolicy,
		APIVersion: sdk.PolicyAPIVersion, StartTimeout: config.DefaultStartTimeout,
	})
}

// schedule asks each distinct live policy, once, for the instances of its
// phases, and returns one instance per phase in pipeline order. A policy
// that fails (its process crashed or hung past the policy timeout, it
// returned an error, or it chose an instance that is not a ready one of the
// phase) is replaced for this request by the built-in round robin, so that
// no request fails because of its policy; the failure is logged and
// counted. Shadow policies are asked too, in the background. The caller
// holds schedMu.
func (s *Supervisor) schedule(ctx context.Context, id, key string) ([]*instance, error) {
	chosen := make([]*instance, len(s.phases))
	type group struct {
		p      *policy
		phases []int
	}
	var groups []*group
	for i, ph := range s.phases {
		p := ph.live.Load()
		k := slices.IndexFunc(groups, func(g *group) bool { return g.p == p })
		if k < 0 {
			groups = append(groups, &group{p: p})
			k = len(groups) - 1
		}
		groups[k].phases = append(groups[k].phases, i)
	}
	for _, g := range groups {
		req := sdk.ScheduleRequest{RequestID: id, Key: key}
		for _, i := range g.phases {
			req.Phases = append(req.Phases, s.phases[i].candidates())
		}
		d, callErr := s.callPolicy(ctx, g.p, req)
		for _, i := range g.phases {
			ph := s.phases[i]
			ph.stats.decisions.Add(1)
			var in *instance
			err := callErr
			if err == nil {
				in, err = ph.chosen(g.p.name, d.Choices[ph.cfg.Name])
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				ph.stats.fallbacks.Add(1)
				s.logger.Warn("policy failed: the built-in round robin schedules this request", "phase", ph.cfg.Name, "policy", g.p.name, "request", id, "error", err)
				if in, err = s.fallbackPick(ctx, ph); err != nil {
					return nil, err
				}
			}
			chosen[i] = in
		}
	}
	s.shadow(id, key, chosen)
	return chosen, nil
}

// callPolicy calls a policy's Schedule with the policy timeout. When the
// process has exited, or does not answer in time, it is restarted.
func (s *Supervisor) callPolicy(ctx context.Context, p *policy, req sdk.ScheduleRequest) (sdk.Decision, error) {
	impl, ok := p.current()
	if !ok {
		return sdk.Decision{}, fmt.Errorf("policy %s is %s", p.name, policyRestarting)
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.PolicyTimeout)
	defer cancel()
	d, err := impl.Schedule(cctx, req)
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

// chosen returns the instance a policy chose for the phase, or an error if
// it is not a ready instance of the phase.
func (ph *phase) chosen(policy, id string) (*instance, error) {
	in := ph.instance(id)
	switch {
	case in == nil:
		return nil, fmt.Errorf("policy %s chose %q for phase %s, which is not one of its instances", policy, id, ph.cfg.Name)
	case in.currentState() != stateReady:
		return nil, fmt.Errorf("policy %s chose instance %s for phase %s, which is %s, not ready", policy, in.id, ph.cfg.Name, in.currentState())
	}
	return in, nil
}

// fallbackPick schedules one phase with the built-in round robin.
func (s *Supervisor) fallbackPick(ctx context.Context, ph *phase) (*instance, error) {
	d, err := s.fallback.Schedule(ctx, sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{ph.candidates()}})
	if err != nil {
		return nil, fmt.Errorf("phase %s: %w", ph.cfg.Name, err)
	}
	return ph.chosen(roundrobin.Name, d.Choices[ph.cfg.Name])
}

// restartPolicy marks a policy as restarting (once: a second failure of
// the same process does nothing) and starts a restarter: it kills the old
// process, then starts a new one with exponential backoff until it runs or
// the supervisor is released.
func (s *Supervisor) restartPolicy(p *policy, failed sdk.Policy, cause error) {
	p.mu.Lock()
	if p.impl != failed || p.state != policyRunning {
		p.mu.Unlock()
		return
	}
	old := p.proc
	p.state, p.proc, p.lastErr = policyRestarting, nil, cause.Error()
	p.mu.Unlock()
	s.logger.Error("policy plugin failed; restarting it", "policy", p.name, "error", cause)
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		if old != nil {
			old.kill()
		}
		delay := policyBackoffMin
		for {
			select {
			case <-time.After(delay):
			case <-s.bgCtx.Done():
				return
			}
			proc, err := s.startPolicyProcess(s.bgCtx, p.name, p.path)
			if err == nil {
				p.mu.Lock()
				if s.bgCtx.Err() != nil || p.state != policyRestarting {
					p.mu.Unlock()
					proc.kill()
					return
				}
				p.proc, p.impl, p.state = proc, proc.raw.(sdk.Policy), policyRunning
				p.restarts++
				p.mu.Unlock()
				s.logger.Info("policy plugin restarted", "policy", p.name, "pid", proc.pid)
				return
			}
			p.mu.Lock()
			p.lastErr = err.Error()
			p.mu.Unlock()
			s.logger.Error("restart policy plugin", "policy", p.name, "error", err, "next_try_in", 2*delay)
			delay = min(2*delay, policyBackoffMax)
		}
	}()
}

// shadow asks every shadow policy, in the background, what it would have
// chosen for its phases, and counts how often it agrees with chosen.
func (s *Supervisor) shadow(id, key string, chosen []*instance) {
	byPolicy := map[*policy][]int{}
	for i, ph := range s.phases {
		if p := ph.shadowOf.Load(); p != nil {
			byPolicy[p] = append(byPolicy[p], i)
		}
	}
	for p, idx := range byPolicy {
		req := sdk.ScheduleRequest{RequestID: id, Key: key}
		for _, i := range idx {
			req.Phases = append(req.Phases, s.phases[i].candidates())
		}
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			d, err := s.callPolicy(s.bgCtx, p, req)
			for _, i := range idx {
				st := &s.phases[i].stats
				if err != nil {
					st.shadowErrors.Add(1)
					continue
				}
				st.shadowCalls.Add(1)
				if d.Choices[s.phases[i].cfg.Name] == chosen[i].id {
					st.shadowAgree.Add(1)
				}
			}
		}()
	}
}

// ErrUnknownPhase is returned for a phase name the pipeline does not have.
var ErrUnknownPhase = errors.New("no such phase")

func (s *Supervisor) phaseNamed(name string) (*phase, error) {
	for _, ph := range s.phases {
		if ph.cfg.Name == name {
			return ph, nil
		}
	}
	names := make([]string, len(s.phases))
	for i, ph := range s.phases {
		names[i] = ph.cfg.Name
	}
	return nil, fmt.Errorf("%w %q; the phases are: %s", ErrUnknownPhase, name, strings.Join(names, ", "))
}

// acquirePolicy returns the running policy name, starting its process if no
// phase uses it yet; started says so. The caller holds policyMu.
func (s *Supervisor) acquirePolicy(ctx context.Context, name string) (p *policy, started bool, err error) {
	if p := s.policies[name]; p != nil {
		return p, false, nil
	}
	p, err = s.startPolicy(ctx, name)
	if err != nil {
		return nil, false, err
	}
	s.policies[name] = p
	return p, true, nil
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
	if proc != nil {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			proc.kill()
		}()
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
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	p, started, err := s.acquirePolicy(ctx, name)
	if err != nil {
		return fmt.Errorf("policy set %s %s: %w", phaseName, name, err)
	}
	trial := sdk.ScheduleRequest{RequestID: "trial", Phases: []sdk.PhaseCandidates{ph.candidates()}}
	d, err := s.callPolicy(ctx, p, trial)
	if err == nil {
		_, err = ph.chosen(name, d.Choices[ph.cfg.Name])
	}
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
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	var p *policy
	if name != "" {
		if p, _, err = s.acquirePolicy(ctx, name); err != nil {
			return fmt.Errorf("policy shadow %s %s: %w", phaseName, name, err)
		}
	}
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
	var l PolicyList
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
		pr := PolicyProc{Name: p.name, State: p.state, Restarts: p.restarts, LastError: p.lastErr}
		if p.proc != nil {
			pr.PID = p.proc.pid
		}
		p.mu.Unlock()
		l.Running = append(l.Running, pr)
	}
	s.policyMu.Unlock()
	slices.SortFunc(l.Running, func(a, b PolicyProc) int { return strings.Compare(a.Name, b.Name) })
	l.Available = s.catalog.List(sdk.KindPolicy)
	return l
}

// stopPolicies stops the restarters and shadow calls, then every policy
// process.
func (s *Supervisor) stopPolicies() {
	if s.bgCancel != nil {
		s.bgCancel()
	}
	s.bg.Wait()
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
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

// List returns the names of the plugins of a kind in the directory,
// sorted.
func (c Catalog) List(kind sdk.Kind) []string {
	entries, err := os.ReadDir(c.Dir)
	if err != nil {
		return nil
	}
	var out []string
	prefix := BinaryName(kind, "")
	for _, e := range entries {
		if name, ok := strings.CutPrefix(e.Name(), prefix); ok && name != "" {
			if _, err := c.Find(kind, name); err == nil {
				out = append(out, name)
			}
		}
	}
	return out
}

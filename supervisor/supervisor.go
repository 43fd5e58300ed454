// Package supervisor is phased's supervisor: it starts the phase and policy
// plugins of a config as go-plugin children, dispatches requests through
// them, serves the control API, and tears everything down in order.
//
// Lifecycle: New (no side effects) → Start (plugins started; on failure the
// ones already started are stopped) → Submit / Remove / Status, concurrently
// → Release (idempotent, bounded: stop intake, drain with a grace period,
// remove remaining rooms, release phases upstream → downstream, stop
// policies).
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/policies/roundrobin"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/transfer"
	"github.com/phased/phased/supervisor/config"
)

// Errors callers branch on.
var (
	ErrNotFound  = errors.New("no such request")
	ErrReleasing = errors.New("the supervisor is releasing and takes no new requests")
	ErrBadInput  = errors.New("bad request")
)

// Options are the supervisor's settings that do not come from the config.
type Options struct {
	Logger   hclog.Logger
	LogLevel string // passed to plugins; default "info"
}

// Supervisor runs one pipeline.
type Supervisor struct {
	cfg    *config.Config
	opts   Options
	logger hclog.Logger

	runDir     string // ipc sockets of all instances
	ownsRunDir bool   // created by Start, removed at release
	phases     []*phase
	catalog    Catalog

	// Policies: the running policy processes by name (policyMu), the
	// built-in round robin that stands in for a failed one, and the
	// background work (restarters, shadow calls) that bgCancel stops.
	policyMu sync.Mutex
	policies map[string]*policy
	fallback *roundrobin.Policy
	bg       sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc

	ctx    context.Context // cancelled at the end of release's grace
	cancel context.CancelFunc

	nextRoom atomic.Uint64
	nextReq  atomic.Uint64
	slots    chan struct{} // one per request dispatched at once (MaxInflight)

	schedMu  sync.Mutex // one scheduling decision at a time (see dispatch)
	mu       sync.Mutex
	requests map[string]*request
	order    []string // request ids in submission order
	closing  bool     // intake stopped
	started  bool     // Start succeeded
	inflight sync.WaitGroup

	releaseOnce sync.Once
	releaseErr  error
	released    chan struct{}
}

// phase is one phase of the pipeline and its instances.
type phase struct {
	cfg       config.Phase
	instances []*instance
	live      atomic.Pointer[policy] // the policy that schedules it
	shadowOf  atomic.Pointer[policy] // asked beside live, never used; nil: none
	stats     policyStats
}

// instance is one running phase plugin process.
type instance struct {
	id    string
	index int
	phase string
	proc  *process
	ctl   sdk.PhaseControl

	inflight atomic.Int64
	rooms    atomic.Int64  // rooms the supervisor opened and has not removed
	state    atomic.Value  // string
	latency  atomic.Uint64 // math.Float64bits of the Run latency EWMA, in ms
}

// latencyAlpha is the weight of the newest Run in an instance's latency
// EWMA: about the last ten requests count.
const latencyAlpha = 0.2

// observe folds one Run's latency into the instance's EWMA.
func (in *instance) observe(d time.Duration) {
	ms := float64(d) / float64(time.Millisecond)
	for {
		old := in.latency.Load()
		v := ms
		if old != 0 {
			v = latencyAlpha*ms + (1-latencyAlpha)*math.Float64frombits(old)
		}
		if in.latency.CompareAndSwap(old, math.Float64bits(v)) {
			return
		}
	}
}

// latencyMs returns the instance's Run latency EWMA in ms, 0 before its
// first request.
func (in *instance) latencyMs() float64 { return math.Float64frombits(in.latency.Load()) }

// Instance states shown in status.
const (
	stateReady    = "ready"
	stateReleased = "released"
	stateExited   = "exited"
)

func (in *instance) currentState() string {
	s, _ := in.state.Load().(string)
	if s == stateReady && in.proc.exited() {
		return stateExited
	}
	return s
}

// New returns a supervisor for cfg. It starts nothing.
func New(cfg *config.Config, opts Options) *Supervisor {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	return &Supervisor{
		cfg:      cfg,
		opts:     opts,
		logger:   opts.Logger,
		policies: make(map[string]*policy),
		requests: make(map[string]*request),
		released: make(chan struct{}),
	}
}

// Start finds and starts every plugin: policies first, then the instances of
// each phase, upstream first. When one fails, those already started are
// stopped and the errors joined.
func (s *Supervisor) Start(ctx context.Context) (err error) {
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	s.fallback = roundrobin.New()
	s.slots = make(chan struct{}, max(s.cfg.MaxInflight, 1))
	if err := s.makeRunDir(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.stopAll(context.Background()))
		}
	}()
	pluginDir := s.cfg.PluginDir
	if pluginDir == "" {
		pluginDir = DefaultPluginDir()
	}
	cat := Catalog{Dir: pluginDir}
	s.catalog = cat
	// Find every binary first, so that a typo fails before anything starts.
	paths := map[string]string{}
	for _, name := range s.cfg.Policies() {
		p, err := cat.Find(sdk.KindPolicy, name)
		if err != nil {
			return err
		}
		paths["policy/"+name] = p
	}
	for _, ph := range s.cfg.Phases {
		p, err := cat.Find(sdk.KindPhase, ph.Plugin)
		if err != nil {
			return fmt.Errorf("phase %q: %w", ph.Name, err)
		}
		paths["phase/"+ph.Plugin] = p
	}
	for _, name := range s.cfg.Policies() {
		p, err := s.startPolicy(ctx, name)
		if err != nil {
			return err
		}
		s.policyMu.Lock()
		s.policies[name] = p
		s.policyMu.Unlock()
	}
	for _, pcfg := range s.cfg.Phases {
		ph := &phase{cfg: pcfg}
		ph.live.Store(s.policies[pcfg.Policy])
		s.phases = append(s.phases, ph)
		for i := range pcfg.Instances {
			in, err := s.startInstance(ctx, pcfg, i, paths["phase/"+pcfg.Plugin])
			if err != nil {
				return fmt.Errorf("phase %q: %w", pcfg.Name, err)
			}
			ph.instances = append(ph.instances, in)
		}
	}
	s.mu.Lock()
	s.started = true
	s.mu.Unlock()
	s.logger.Info("pipeline started", "phases", len(s.phases), "run_dir", s.runDir)
	return nil
}

// makeRunDir creates the run directory; it stays short, since unix socket
// paths are limited to 107 bytes.
func (s *Supervisor) makeRunDir() error {
	// What a supervisor that died left is removed first (its run
	// directory may be ours: a configured run_dir).
	if err := s.sweepStale(); err != nil {
		s.logger.Warn("cleaning up after a supervisor that did not release", "error", err)
	}
	if s.cfg.RunDir != "" {
		if err := os.MkdirAll(s.cfg.RunDir, 0o700); err != nil {
			return fmt.Errorf("run_dir: %w", err)
		}
		s.runDir = s.cfg.RunDir
	} else {
		dir, err := os.MkdirTemp("/tmp", "phased-")
		if err != nil {
			return fmt.Errorf("run dir: %w", err)
		}
		s.runDir, s.ownsRunDir = dir, true
	}
	if err := os.MkdirAll(filepath.Join(s.runDir, "plugin"), 0o700); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	return writePIDFile(s.runDir, s.ownsRunDir)
}

func (s *Supervisor) start(ctx context.Context, pc processConfig) (*process, error) {
	pc.Logger = s.logger.Named(pc.Name)
	pc.SocketDir = filepath.Join(s.runDir, "plugin")
	pc.LogLevel = s.opts.LogLevel
	binary := filepath.Base(pc.Path)
	pc.Pin, pc.PinnedAt = s.cfg.Pins[binary], s.cfg.PinnedAt(binary)
	if err := os.MkdirAll(pc.SocketDir, 0o700); err != nil {
		return nil, err
	}
	return startProcess(ctx, pc)
}

func (s *Supervisor) startInstance(ctx context.Context, pcfg config.Phase, i int, path string) (*instance, error) {
	id := fmt.Sprintf("%s-%d", pcfg.Name, i)
	proc, err := s.start(ctx, processConfig{
		Name: id, Path: path, Kind: sdk.KindPhase,
		APIVersion: sdk.PhaseAPIVersion, StartTimeout: pcfg.StartTimeout,
	})
	if err != nil {
		return nil, err
	}
	in := &instance{id: id, index: i, phase: pcfg.Name, proc: proc, ctl: proc.raw.(sdk.PhaseControl)}
	dir := filepath.Join(s.runDir, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		proc.kill()
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, pcfg.StartTimeout)
	defer cancel()
	err = in.ctl.Configure(cctx, sdk.InstanceConfig{
		Instance: id, RunDir: dir, Params: s.cfg.PhaseParams(pcfg),
		ZMQHost: pcfg.Address, PeerTimeout: s.cfg.PeerTimeout, Device: pcfg.Device,
	})
	if err != nil {
		proc.kill()
		return nil, fmt.Errorf("instance %s: configure: %w", id, err)
	}
	in.state.Store(stateReady)
	return in, nil
}

// DefaultPluginDir is the "plugins" directory beside the running binary.
func DefaultPluginDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "plugins"
	}
	return filepath.Join(filepath.Dir(exe), "plugins")
}

// Done is closed when release has finished.
func (s *Supervisor) Done() <-chan struct{} { return s.released }

// Release stops intake, waits up to the config's grace for in-flight
// requests, fails the rest (their rooms are removed in order), releases the
// phases upstream → downstream, stops the policies and removes the run
// directory. It is idempotent; later calls return the first call's result.
func (s *Supervisor) Release(ctx context.Context) error {
	s.releaseOnce.Do(func() {
		defer close(s.released)
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		drained := make(chan struct{})
		go func() { s.inflight.Wait(); close(drained) }()
		t := time.NewTimer(s.cfg.Grace)
		defer t.Stop()
		select {
		case <-drained:
		case <-t.C:
			s.logger.Warn("grace period over; failing in-flight requests", "grace", s.cfg.Grace)
		case <-ctx.Done():
		}
		if s.cancel != nil {
			s.cancel() // fails what is left; each request removes its rooms in order
		}
		<-drained
		s.releaseErr = s.stopAll(ctx)
		s.logger.Info("released")
	})
	return s.releaseErr
}

// stopAll releases the phases upstream → downstream, stops the policies and
// removes the run directory. Used by Release and by a failed Start.
func (s *Supervisor) stopAll(ctx context.Context) error {
	var errs []error
	for _, ph := range s.phases {
		for _, in := range ph.instances {
			if in.currentState() == stateReady {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := in.ctl.Release(rctx); err != nil {
					errs = append(errs, fmt.Errorf("instance %s: release: %w", in.id, err))
				}
				cancel()
			}
			in.proc.kill()
			in.state.Store(stateReleased)
			// An instance that died, or did not release in time, leaves
			// its segments behind: sweep them.
			if n, err := transfer.SweepSegments("", sdk.TransferName(in.id, in.proc.pid)); err != nil {
				errs = append(errs, fmt.Errorf("instance %s: %w", in.id, err))
			} else if n > 0 {
				s.logger.Warn("removed shared-memory segments left by an instance", "instance", in.id, "count", n)
			}
		}
	}
	s.stopPolicies()
	switch {
	case s.ownsRunDir && s.runDir != "":
		if err := os.RemoveAll(s.runDir); err != nil {
			errs = append(errs, err)
		}
	case s.runDir != "":
		if err := removeRunContents(s.runDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

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
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/phased/phased/policies/roundrobin"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// Errors callers branch on.
var (
	ErrNotFound  = errors.New("no such request")
	ErrReleasing = errors.New("the supervisor is releasing and takes no new requests")
	ErrBadInput  = errors.New("bad request")
	ErrQueueFull = errors.New("the queue is full")
	// ErrDeadlineExceeded begins the reason of a request that was not
	// done by its deadline.
	ErrDeadlineExceeded = errors.New("deadline exceeded")
)

// Options are the supervisor's settings that do not come from the config.
type Options struct {
	Logger   hclog.Logger
	LogLevel string // passed to plugins; default "info"
	// StateDir holds the request journal; "" keeps requests in memory
	// only (nothing survives the supervisor).
	StateDir string
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

	// Policies: the running policy processes by name (policyMu, held for
	// moments only, never across a process start or a call), and the
	// built-in round robin that stands in for a failed one. changeMu
	// serializes the changes a user asks for (policy set, shadow), each
	// of which may start a process and make a trial call.
	policyMu        sync.Mutex
	policies        map[string]*policy
	policiesStopped bool // release stopped them: no new one
	changeMu        sync.Mutex
	fallback        *roundrobin.Policy

	// The background work (process watchers, restarters, shadow calls),
	// started by background, stopped by stopBackground.
	bgMu     sync.Mutex // orders background's Add before stopBackground's Wait
	bg       sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc

	ctx    context.Context // cancelled at the end of release's grace
	cancel context.CancelFunc

	// readyCh is closed and replaced whenever an instance becomes ready
	// or stops being ready (readyChanged), for requests waiting on one.
	readyMu sync.Mutex
	readyCh chan struct{}

	// Counts for status and the chaos test.
	crashes atomic.Int64 // instance processes that exited unasked
	retried atomic.Int64 // dispatch attempts after the first

	// cluster is the hosts of agents (remote.go); nil without a cluster
	// block.
	cluster *cluster

	journal *journal // nil without a state directory
	metrics *metrics

	nextRoom atomic.Uint64
	// pipeline is set once Start has made every phase: s.phases no
	// longer changes (spare.go reads it from other goroutines).
	pipeline    atomic.Bool
	ids         idGen
	queue       waitQueue  // the requests waiting for a slot, and the slots
	scaleFileMu sync.Mutex // one write of the state directory's scale file at a time
	// The autoscaler (scaler.go): the running scaler plugin, nil for
	// none (scalerMu); scalerChange makes one SetScaler at a time;
	// scalersStopped once release stopped it.
	scalerMu       sync.Mutex
	scaler         *scaler
	scalersStopped bool
	scalerChange   sync.Mutex
	// joining counts the submissions admitted to the queue (max_queue)
	// that have not joined it yet, guarded by mu.
	joining int

	schedMu  sync.Mutex // one scheduling decision at a time (see dispatch)
	mu       sync.Mutex
	requests map[string]*request
	order    []string // request ids in submission order
	retained int64    // their retainedSize, summed
	closing  bool     // intake stopped
	started  bool     // Start succeeded
	inflight sync.WaitGroup

	releaseOnce sync.Once
	releaseErr  error
	released    chan struct{}
}

// New returns a supervisor for cfg. It starts nothing.
func New(cfg *config.Config, opts Options) *Supervisor {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	s := &Supervisor{
		cfg:      cfg,
		opts:     opts,
		logger:   opts.Logger,
		policies: make(map[string]*policy),
		requests: make(map[string]*request),
		released: make(chan struct{}),
		readyCh:  make(chan struct{}),
		metrics:  newMetrics(),
	}
	s.metrics.reg.MustRegister(stateCollector{s})
	return s
}

// The supervisor's own states, as status and /metrics show them.
const (
	SupervisorStarting  = "starting"
	SupervisorRunning   = "running"
	SupervisorReleasing = "releasing"
	SupervisorReleased  = "released"
)

// stateLocked is the supervisor's state; s.mu is held.
func (s *Supervisor) stateLocked() string {
	select {
	case <-s.released:
		return SupervisorReleased
	default:
	}
	switch {
	case s.closing:
		return SupervisorReleasing
	case s.started:
		return SupervisorRunning
	}
	return SupervisorStarting
}

// MetricsHandler serves the supervisor's metrics in Prometheus's text
// format. A figure that cannot be gathered is left out of the answer, not
// made an error of the whole scrape.
func (s *Supervisor) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// health is the supervisor's state, and whether it is ready: running,
// and every phase has a ready instance.
func (s *Supervisor) health() Health {
	s.mu.Lock()
	h := Health{State: s.stateLocked()}
	s.mu.Unlock()
	if h.State != SupervisorRunning {
		h.Reason = "the supervisor is " + h.State
		return h
	}
	for _, ph := range s.phases {
		ready := 0
		for _, in := range ph.all() {
			if in.currentState() == stateReady {
				ready++
			}
		}
		if ready == 0 {
			h.Reason = fmt.Sprintf("phase %s has no ready instance (of %d)", ph.cfg.Name, len(ph.all()))
			return h
		}
	}
	h.Ready = true
	return h
}

// Start finds and starts every plugin: policies first, then the instances of
// each phase, upstream first. When one fails, those already started are
// stopped and the errors joined.
func (s *Supervisor) Start(ctx context.Context) (err error) {
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	s.fallback = roundrobin.New()
	s.queue.init(max(s.cfg.MaxInflight, 1))
	if err := s.makeRunDir(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.stopAll(context.Background()))
		}
	}()
	// The journal first: a second supervisor on the same state directory
	// fails before it starts any plugin.
	recovered, err := s.openState()
	if err != nil {
		return err
	}
	pluginDir := s.cfg.PluginDir
	if pluginDir == "" {
		pluginDir = DefaultPluginDir()
	}
	cat := Catalog{Dir: pluginDir}
	s.catalog = cat
	if err := s.startCluster(); err != nil {
		return err
	}
	// Find every binary and check its pin first, so that a typo or a
	// binary that is not the pinned one fails before anything starts.
	paths := map[string]string{}
	for _, name := range s.cfg.Policies() {
		p, err := cat.Find(sdk.KindPolicy, name)
		if err != nil {
			return err
		}
		if err := checkPinned(s.cfg, sdk.KindPolicy, name, p); err != nil {
			return err
		}
		paths["policy/"+name] = p
	}
	for _, ph := range s.cfg.Phases {
		p, err := cat.Find(sdk.KindPhase, ph.Plugin)
		if err != nil {
			return fmt.Errorf("phase %q: %w", ph.Name, err)
		}
		if _, checked := paths["phase/"+ph.Plugin]; !checked {
			if err := checkPinned(s.cfg, sdk.KindPhase, ph.Plugin, p); err != nil {
				return fmt.Errorf("phase %q: %w", ph.Name, err)
			}
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
	scaled := s.loadScale()
	for stage, pcfg := range s.cfg.Phases {
		ph := &phase{cfg: pcfg, stage: stage, path: paths["phase/"+pcfg.Plugin]}
		ph.live.Store(s.policies[pcfg.Policy])
		s.phases = append(s.phases, ph)
		var members []*instance
		for i := range s.startCount(pcfg, scaled) {
			in, err := s.startInstance(ctx, ph, i)
			if err != nil {
				return fmt.Errorf("phase %q: %w", pcfg.Name, err)
			}
			members = append(members, in)
			ph.setMembers(members)
		}
	}
	s.pipeline.Store(true)
	for _, ph := range s.phases {
		for _, in := range ph.all() {
			s.fillSpare(in.cur.Load())
		}
	}
	s.joinCluster()
	if name := s.cfg.Scaler.Name; name != "" {
		sc, err := s.startScaler(ctx, name, s.cfg.Scaler.Params)
		if err != nil {
			return fmt.Errorf("scaler: %w", err)
		}
		s.scaler = sc
	}
	s.background(func() { s.scaleLoop(cmp.Or(s.cfg.Scaler.Interval, config.DefaultScalerInterval)) })
	s.mu.Lock()
	s.started = true
	s.recover(recovered)
	s.mu.Unlock()
	s.logger.Info("pipeline started", "phases", len(s.phases), "run_dir", s.runDir, "artifacts", s.artifactDir())
	return nil
}

// makeRunDir creates the run directory; it stays short, since unix socket
// paths are limited to 107 bytes.
func (s *Supervisor) makeRunDir() error {
	// A configured run_dir must be private before anything in it is
	// touched: another user who may write there could plant symlinks.
	if s.cfg.RunDir != "" {
		if err := privateDir(s.cfg.RunDir); err != nil {
			return fmt.Errorf("run_dir: %w", err)
		}
	}
	// What a supervisor that died left is removed first (its run
	// directory may be ours: a configured run_dir).
	if err := s.sweepStale(); err != nil {
		s.logger.Warn("cleaning up after a supervisor that did not release", "error", err)
	}
	if s.cfg.RunDir != "" {
		s.runDir = s.cfg.RunDir
	} else {
		dir, err := newRunDir()
		if err != nil {
			return fmt.Errorf("run dir: %w", err)
		}
		s.runDir, s.ownsRunDir = dir, true
	}
	if err := writePIDFile(s.runDir, s.ownsRunDir); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	if err := os.Mkdir(filepath.Join(s.runDir, "plugin"), 0o700); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	return nil
}

func (s *Supervisor) start(ctx context.Context, pc processConfig) (*process, error) {
	pc.Logger = s.logger.Named(pc.Name)
	pc.SocketDir = filepath.Join(s.runDir, "plugin")
	pc.LogLevel = s.opts.LogLevel
	pc.Pin, pc.PinnedAt = pinOf(s.cfg, pc.Path)
	pc.Env = append(pc.Env, s.curveEnv()...)
	if err := os.MkdirAll(pc.SocketDir, 0o700); err != nil {
		return nil, err
	}
	p, err := startProcess(ctx, pc)
	if err == nil && p.pid > 0 {
		if err := noteGroup(s.runDir, p.pid); err != nil {
			s.logger.Warn("note a plugin's process group in the run directory", "plugin", pc.Name, "error", err)
		}
	}
	return p, err
}

// DefaultPluginDir is the "plugins" directory beside the running binary.
func DefaultPluginDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "plugins"
	}
	return filepath.Join(filepath.Dir(exe), "plugins")
}

// background runs f in a goroutine of the supervisor's background work
// (process watchers, restarters, shadow calls, kills), which release
// cancels (bgCtx) and waits for. Once release has begun to, it starts
// nothing and returns false: adding to a WaitGroup being waited on would
// race.
func (s *Supervisor) background(f func()) bool {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.bgCtx.Err() != nil {
		return false
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		f()
	}()
	return true
}

// stopBackground ends the background work and waits for it.
func (s *Supervisor) stopBackground() {
	s.bgMu.Lock()
	if s.bgCancel != nil {
		s.bgCancel()
	}
	s.bgMu.Unlock()
	s.bg.Wait()
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

// releaseTimeout bounds an instance's Release call at release; past it
// the instance is killed.
const releaseTimeout = 10 * time.Second

// stopAll releases the phases upstream → downstream, stops the policies and
// removes the run directory. Used by Release and by a failed Start.
func (s *Supervisor) stopAll(ctx context.Context) error {
	var errs []error
	// Instance watchers and restarters stop first: what exits from here
	// on is released, not restarted.
	for _, ph := range s.phases {
		for _, in := range ph.all() {
			in.setState(stateReleased)
		}
	}
	s.stopBackground()
	s.stopScaler()
	// A scaling under way ends (its work ends with the background's)
	// before the instances are released; none begins after.
	for _, ph := range s.phases {
		ph.scaleMu.Lock()
		ph.scaleMu.Unlock()
	}
	s.removeSpares()
	for _, ph := range s.phases {
		for _, in := range ph.all() {
			if l := in.cur.Load(); l != nil {
				if err := s.releaseLife(ctx, in, l); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	s.stopCluster()
	s.stopPolicies()
	if err := s.removeCheckpoints(); err != nil {
		errs = append(errs, fmt.Errorf("checkpoints: %w", err))
	}
	if s.journal != nil {
		if err := s.journal.close(); err != nil {
			errs = append(errs, fmt.Errorf("journal: %w", err))
		}
	}
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

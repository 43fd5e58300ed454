package supervisor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/transfer"
	"github.com/phased/phased/supervisor/config"
)

// Instance states shown in status.
//
//	starting → ready → (exited →) restarting → ready …
//	                                         ↘ failed (gave up)
//	any → draining (a scale-in retires it; scale.go) → released
//	any → released (at release)
const (
	stateStarting   = "starting"   // process started, not ready yet
	stateReady      = "ready"      // takes requests
	stateDraining   = "draining"   // being scaled in: no new request, released once its requests are gone
	stateExited     = "exited"     // its process exited a moment ago
	stateRestarting = "restarting" // waiting out its backoff, or starting again
	stateFailed     = "failed"     // too many restarts within the window: given up
	stateReleased   = "released"
)

// instance is one instance of a phase: a slot that a plugin process fills,
// and fills again after that process exits (restart with backoff), until it
// is released or given up.
type instance struct {
	id    string
	index int
	phase string
	stage int // its phase's place in the pipeline, from 0
	cfg   config.Phase
	path  string // the plugin binary
	dir   string // its ipc sockets, emptied at every restart; "" on another host
	// host is the agent that runs it on another host (remote.go), nil
	// on this one; gpu the GPU it is given there ("" none).
	host *host
	gpu  string
	// clusterHost is the host label policies see ("" without a cluster).
	clusterHost string
	// scaled is set for an instance a scale-out started on another
	// host: scale-in retires those first.
	scaled bool
	// labelSet is labels(), made once.
	labelSet   map[string]string
	labelsOnce sync.Once

	cur      atomic.Pointer[life] // the process filling the slot now
	inflight atomic.Int64
	rooms    atomic.Int64 // rooms the supervisor opened and has not removed
	// recv counts those of them it receives on (its credits, credit.go),
	// held those of them it opened; refusing is set when it refused a
	// room while it held some, and cleared when one of those is
	// removed: it is offered nothing meanwhile.
	recv, held atomic.Int64
	refusing   atomic.Bool
	credit     func()        // wakes the requests that wait for credit (Supervisor.readyChanged)
	latency    atomic.Uint64 // math.Float64bits of the Run latency EWMA, in ms

	restart *restarter // the phase's restart rule, applied to this slot

	mu       sync.Mutex // guards state transitions and what follows
	state    string
	lastExit string // how its last process ended
}

// life is one plugin process of an instance, from its start to its exit.
type life struct {
	in   *instance
	proc *process
	ctl  sdk.PhaseControl

	mu       sync.Mutex
	dead     *InstanceError        // set at exit
	users    map[*attempt]struct{} // dispatch attempts that use it
	hungWhy  string                // set when the supervisor kills it as hung
	oomKills int64                 // hostOOMKills when it was launched
	hungOnce sync.Once

	// Its spare rooms (spare.go), guarded by mu: per instance of the next
	// phase, the one open or being opened for a hop to it; spareFailed
	// when an open last failed.
	spares      map[*instance]*spareRoom
	spareFailed time.Time

	dogMu sync.Mutex
	dogs  map[runKey]*watchdog // hang watchdogs of the Runs computing or sending
	ended map[runKey]uint8     // Runs that returned or finished, until both
}

// runKey names one Run of a request on an instance: a request dispatched
// again has new rooms, so a late event of an old attempt does not touch
// the new attempt's watchdog.
type runKey struct {
	request         string
	inRoom, outRoom uint64
}

// How a Run has ended, as far as the supervisor knows: its call returned,
// its finished event arrived. The entry goes when both have happened.
const (
	runReturned = 1 << iota
	runFinished
)

// maxEnded bounds the Runs remembered in life.ended: a finished event that
// a full progress stream dropped leaves its Run there.
const maxEnded = 4096

// markEnded records how (bit) a Run ended; l.dogMu is held.
func (l *life) markEnded(key runKey, bit uint8) {
	if l.ended == nil || len(l.ended) >= maxEnded {
		l.ended = map[runKey]uint8{}
	}
	if l.ended[key]|bit == runReturned|runFinished {
		delete(l.ended, key)
		return
	}
	l.ended[key] |= bit
}

// watchdog is the hang timer of one Run and the last progress it reported.
type watchdog struct {
	t         *time.Timer
	last      sdk.Progress
	deadline  time.Time // when it fires unless re-armed
	delivered bool      // armed because the Run's inputs arrived
}

// progressed handles one progress event: it re-arms the Run's hang
// watchdog while the Run computes or sends, and disarms it otherwise
// (waiting for inputs is the upstream's time), unless the Run's inputs
// have been delivered (see delivered). It runs for every step a phase
// reports, so it only resets a timer.
func (l *life) progressed(s *Supervisor, p sdk.Progress) {
	key := runKey{p.Request, p.InRoom, p.OutRoom}
	l.dogMu.Lock()
	defer l.dogMu.Unlock()
	switch {
	case p.Stage == sdk.StageFinished:
		l.disarm(key)
		l.markEnded(key, runFinished)
		return
	case l.ended[key]&runReturned != 0: // the call returned: late events arm nothing
		l.disarm(key)
		return
	case p.Stage != sdk.StageComputing && p.Stage != sdk.StageSending:
		// A late "waiting" of a Run whose inputs arrived leaves its
		// watchdog armed.
		if d := l.dogs[key]; d == nil || !d.delivered {
			l.disarm(key)
		}
		return
	}
	l.arm(s, key, p)
	// The instance works: the Runs whose inputs were delivered and that
	// still wait for it (queued behind a batch, or behind a one-thread
	// executor's Run) are not hung either.
	for k, d := range l.dogs {
		if k != key && d.delivered && d.last.Stage == sdk.StageWaiting {
			d.t.Reset(l.in.cfg.HangTimeout)
			d.deadline = time.Now().Add(l.in.cfg.HangTimeout)
		}
	}
}

// arm starts or resets the hang watchdog of a Run, whose last progress
// is p; l.dogMu is held.
func (l *life) arm(s *Supervisor, key runKey, p sdk.Progress) *watchdog {
	d := l.dogs[key]
	if d == nil {
		d = &watchdog{}
		d.t = time.AfterFunc(l.in.cfg.HangTimeout, func() { l.hung(s, key, d) })
		if l.dogs == nil {
			l.dogs = map[runKey]*watchdog{}
		}
		l.dogs[key] = d
	} else {
		d.t.Reset(l.in.cfg.HangTimeout)
	}
	d.last, d.deadline = p, time.Now().Add(l.in.cfg.HangTimeout)
	return d
}

// delivered arms the hang watchdog of a Run whose upstream has delivered
// its inputs (its Run returned: the bytes are in this Run's buffers): from
// now on it verifies and computes, and must report progress within
// hang_timeout, so that a receiver that froze (SIGSTOP, a stuck driver)
// is killed and the request dispatched again. Nothing changes for a Run
// that has returned or finished, or that reports progress already.
func (l *life) delivered(s *Supervisor, key runKey) {
	l.dogMu.Lock()
	defer l.dogMu.Unlock()
	if l.ended[key] != 0 || l.dogs[key] != nil {
		return
	}
	d := l.arm(s, key, sdk.Progress{Request: key.request, Stage: sdk.StageWaiting, InRoom: key.inRoom, OutRoom: key.outRoom})
	d.delivered = true
}

// hung kills the process when a Run's watchdog d fires while still armed
// and past its deadline (progress may have re-armed it as it fired).
func (l *life) hung(s *Supervisor, key runKey, d *watchdog) {
	l.dogMu.Lock()
	armed := l.dogs[key] == d && !time.Now().Before(d.deadline)
	last := d.last
	l.dogMu.Unlock()
	if !armed || s.bgCtx.Err() != nil {
		return // disarmed or re-armed, or released meanwhile
	}
	what := "sending its outputs"
	switch last.Stage {
	case sdk.StageWaiting:
		what = "its inputs were delivered"
	case sdk.StageComputing:
		what = fmt.Sprintf("computing, %d of %d done", last.Done, last.Total)
	}
	why := fmt.Sprintf("no progress for %s on request %s (%s)", l.in.cfg.HangTimeout, key.request, what)
	s.logger.Error("phase instance hung; killing it", "instance", l.in.id, "pid", l.proc.pid, "why", why)
	l.killHung(why)
}

// disarm stops a Run's watchdog; l.dogMu is held.
func (l *life) disarm(key runKey) {
	if d := l.dogs[key]; d != nil {
		d.t.Stop()
		delete(l.dogs, key)
	}
}

// runReturned disarms the watchdog of a Run whose call returned, whatever
// events of it are still on their way or were dropped.
func (l *life) runReturned(key runKey) {
	l.dogMu.Lock()
	defer l.dogMu.Unlock()
	l.disarm(key)
	l.markEnded(key, runReturned)
}

func (l *life) stopWatchdogs() {
	l.dogMu.Lock()
	defer l.dogMu.Unlock()
	for key := range l.dogs {
		l.disarm(key)
	}
}

// InstanceError is why a dispatch attempt failed when an instance it used
// exited or was killed as hung; the request is dispatched again while its
// retry budget lasts.
type InstanceError struct {
	Instance string
	PID      int
	Status   string // how the process ended: "signal: killed", "exit status 2"
	Hung     string // why the supervisor killed it; "" when it died on its own
	// OOM is set when the host's OOM killer killed a process while this
	// one lived (/proc/vmstat's oom_kill grew): a SIGKILL is then taken
	// for a crash, maybe the request's doing, not a kill from outside.
	OOM bool
	// Retired is set when the supervisor ended the attempt because a
	// scale-in retired the instance.
	Retired bool
	// Lost says why the instance's host was lost (its agent's lease
	// expired, or it was unreachable): an attempt lost so is not the
	// request's fault.
	Lost string
}

func (e *InstanceError) Error() string {
	if e.Lost != "" {
		return fmt.Sprintf("instance %s (pid %d) was lost with its host: %s", e.Instance, e.PID, e.Lost)
	}
	if e.Retired {
		return fmt.Sprintf("instance %s (pid %d) was retired by a scale-in", e.Instance, e.PID)
	}
	if e.Hung != "" {
		return fmt.Sprintf("instance %s (pid %d) was killed as hung: %s", e.Instance, e.PID, e.Hung)
	}
	if e.OOM {
		return fmt.Sprintf("instance %s (pid %d) exited: %s (the host's OOM killer ran while it lived)", e.Instance, e.PID, e.Status)
	}
	return fmt.Sprintf("instance %s (pid %d) exited: %s", e.Instance, e.PID, e.Status)
}

// External reports whether the process was stopped by a signal from
// outside — an operator's kill, a drained node — rather than a crash
// (an exit status, a fault signal), a hang or an out-of-memory kill:
// an attempt lost so is not the request's fault.
func (e *InstanceError) External() bool {
	if e.Retired || e.Lost != "" {
		return true
	}
	if e.Hung != "" || e.OOM {
		return false
	}
	switch e.Status {
	case "signal: killed", "signal: terminated", "signal: interrupt", "signal: hangup":
		return true
	}
	return false
}

// hostOOMKills is how many processes the host's OOM killer has killed
// since boot (/proc/vmstat's oom_kill), -1 where it cannot be read.
func hostOOMKills() int64 {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
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

// currentState is the instance's state; a ready instance whose process
// has exited is shown exited until the supervisor has handled the exit.
func (in *instance) currentState() string {
	in.mu.Lock()
	st := in.state
	in.mu.Unlock()
	if st == stateReady {
		if l := in.cur.Load(); l == nil || l.proc.exited() {
			return stateExited
		}
	}
	return st
}

func (in *instance) setState(st string) {
	in.mu.Lock()
	in.state = st
	in.mu.Unlock()
}

// pid is the pid of the instance's current process, 0 when none.
func (in *instance) pid() int {
	if l := in.cur.Load(); l != nil {
		return l.proc.pid
	}
	return 0
}

// use registers an attempt with the process; it fails if the process has
// exited already.
func (l *life) use(a *attempt) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead != nil {
		return l.dead
	}
	l.users[a] = struct{}{}
	return nil
}

// usersNow returns the attempts that use l now.
func (l *life) usersNow() []*attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Collect(maps.Keys(l.users))
}

func (l *life) drop(a *attempt) {
	l.mu.Lock()
	delete(l.users, a)
	l.mu.Unlock()
}

// exitError is the process's InstanceError once it has exited, else nil.
func (l *life) exitError() *InstanceError {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dead
}

// killHung kills the process as hung, once; the exit is then handled like
// any other.
func (l *life) killHung(why string) {
	l.hungOnce.Do(func() {
		l.mu.Lock()
		l.hungWhy = why
		l.mu.Unlock()
		l.proc.killNow()
	})
}

// exitTimeout bounds how long a failed call waits for its instance's exit
// notification before it is judged an ordinary failure: a call on a dying
// process often fails (connection closed) before go-plugin has reaped it.
const exitTimeout = 2 * time.Second

// explain turns the error of a call on l into the instance's exit when the
// call failed because the process went away.
func (l *life) explain(err error) error {
	if err == nil {
		return nil
	}
	if dead := l.exitError(); dead != nil {
		return dead
	}
	if !errors.Is(err, sdk.ErrPluginGone) {
		return err
	}
	return l.awaitExit(err)
}

// awaitExit waits up to exitTimeout for the process to exit and returns
// its InstanceError, or err if it still runs.
func (l *life) awaitExit(err error) error {
	t := time.NewTimer(exitTimeout)
	defer t.Stop()
	select {
	case <-l.proc.done:
		// The watcher handles the exit; the error is the same.
		return l.deadError()
	case <-t.C:
		return err
	}
}

// deadError builds the InstanceError of an exited process.
func (l *life) deadError() *InstanceError {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead == nil {
		l.dead = &InstanceError{Instance: l.in.id, PID: l.proc.pid, Status: l.proc.exitStatus(), Hung: l.hungWhy, Lost: l.proc.lost()}
		// A SIGKILL while the OOM killer ran (or where its count is
		// unknown) is taken for an OOM kill: a crash, not free.
		// (This host's counter says nothing of another host's.)
		l.dead.OOM = l.in.host == nil && l.dead.Status == "signal: killed" && l.dead.Hung == "" && (l.oomKills < 0 || hostOOMKills() != l.oomKills)
	}
	return l.dead
}

// launch starts one process for the instance: handshake, Configure, then
// the readiness call. The process is killed when any step fails.
func (s *Supervisor) launch(ctx context.Context, in *instance) (*life, error) {
	oomKills := hostOOMKills()
	pc := processConfig{
		Name: in.id, Path: in.path, Kind: sdk.KindPhase,
		APIVersion: sdk.PhaseAPIVersion, StartTimeout: in.cfg.StartTimeout,
		CPUs: s.cfg.CPUsOf(in.cfg, runtime.NumCPU()),
	}
	var proc *process
	var err error
	if in.host != nil {
		proc, err = s.startRemote(ctx, in, pc)
	} else {
		proc, err = s.start(ctx, pc)
	}
	if err != nil {
		return nil, err
	}
	l := &life{in: in, proc: proc, ctl: proc.raw.(sdk.PhaseControl), users: map[*attempt]struct{}{}, oomKills: oomKills}
	// A process before this one may have left sockets behind (an
	// agent sees to its own host's).
	if in.host == nil {
		if err := os.RemoveAll(in.dir); err != nil {
			proc.kill()
			return nil, err
		}
		if err := os.MkdirAll(in.dir, 0o700); err != nil {
			proc.kill()
			return nil, err
		}
	}
	if in.cfg.Batch.MaxSize > 1 && !proc.info.Has(sdk.FeatureBatch) {
		proc.kill()
		return nil, fmt.Errorf("instance %s: phase %s has a batch block, but its plugin %s does not batch (its Info lists no %q feature): remove the block", in.id, in.phase, in.cfg.Plugin, sdk.FeatureBatch)
	}
	cctx, cancel := context.WithTimeout(ctx, in.cfg.StartTimeout)
	defer cancel()
	// Params the plugin can check before it loads are checked first, so
	// that a typo is reported where the config has it (FILE:LINE:COL).
	if err := s.checkParams(cctx, l); err != nil {
		proc.kill()
		return nil, fmt.Errorf("instance %s: %w", in.id, err)
	}
	err = l.ctl.Configure(cctx, sdk.InstanceConfig{
		Instance: in.id, RunDir: in.dir, Params: s.cfg.PhaseParams(in.cfg),
		ZMQHost: s.zmqHost(in), PeerTimeout: s.cfg.PeerTimeout, Device: in.cfg.Device,
		MaxRooms: in.cfg.MaxRooms, MaxInputBytes: in.cfg.MaxInputBytes,
		Batch: sdk.BatchLimits{MaxSize: in.cfg.Batch.MaxSize, MaxWait: in.cfg.Batch.MaxWait},
	})
	if err != nil {
		proc.kill()
		return nil, fmt.Errorf("instance %s: configure: %w", in.id, err)
	}
	if err := s.awaitReady(ctx, l); err != nil {
		proc.kill()
		return nil, err
	}
	return l, nil
}

// checkParams asks the instance's plugin to check its phase's params
// (ValidateParams) and returns its problems, each at its place in the
// config, as one error; nil when they are valid or the plugin cannot
// check them before it loads (Configure then does).
func (s *Supervisor) checkParams(ctx context.Context, l *life) error {
	problems, err := l.ctl.ValidateParams(ctx, s.cfg.PhaseParams(l.in.cfg))
	if errors.Is(err, sdk.ErrNoValidation) || err == nil && len(problems) == 0 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check params: %w", err)
	}
	lines := make([]string, len(problems))
	for i, p := range problems {
		lines[i] = fmt.Sprintf("%s: %s", s.cfg.ParamAt(l.in.cfg, p.Param), p.Message)
	}
	return fmt.Errorf("%w:\n\t%s", ErrBadParams, strings.Join(lines, "\n\t"))
}

// ErrBadParams is wrapped by Start's error when a phase's plugin finds
// its params invalid.
var ErrBadParams = errors.New("the phase's params are invalid")

// startInstance starts instance i of a phase and watches its process.
func (s *Supervisor) startInstance(ctx context.Context, ph *phase, i int) (*instance, error) {
	in := s.newInstance(ph, i)
	l, err := s.launch(ctx, in)
	if err != nil {
		return nil, err
	}
	s.goLive(in, l)
	return in, nil
}

// newInstance makes instance i of a phase, starting, without a process.
func (s *Supervisor) newInstance(ph *phase, i int) *instance {
	id := fmt.Sprintf("%s-%d", ph.cfg.Name, i)
	in := &instance{id: id, index: i, phase: ph.cfg.Name, stage: ph.stage, cfg: ph.cfg, path: ph.path,
		dir: filepath.Join(s.runDir, id), state: stateStarting, restart: newRestarter(ph.cfg.Restart), credit: s.readyChanged}
	if s.cluster != nil {
		in.clusterHost = s.cluster.host
	}
	return in
}

// goLive makes l the instance's process, ready, and watches it. in.mu is
// not held.
func (s *Supervisor) goLive(in *instance, l *life) {
	in.cur.Store(l)
	in.setState(stateReady)
	// Refused once release has begun: release then stops the process.
	s.background(func() { s.watch(in, l) })
	s.background(func() { s.follow(l) })
	s.readyChanged()
}

// watch waits for the process's exit notification and handles it; it
// returns without handling when the supervisor releases.
func (s *Supervisor) watch(in *instance, l *life) {
	select {
	case <-l.proc.done:
	case <-s.bgCtx.Done():
		return
	}
	if in.currentState() == stateReleased {
		return // released by a scale-in, which handles the rest
	}
	dead := l.deadError()
	users := l.usersNow()
	s.logger.Error("phase instance exited", nonEmpty("instance", in.id, "pid", l.proc.pid, "status", dead.Status,
		"hung", dead.Hung, "requests", len(users), "stderr", l.proc.stderr.String())...)
	// Its segments first (peers that mapped one keep their mapping until
	// they remove the room): nothing of it outlives what it served.
	if in.host != nil {
		// Its agent sweeps its host's.
	} else if n, err := transfer.SweepSegments("", transfer.ProcessName(in.id, l.proc.pid)); err != nil {
		s.logger.Warn("sweep segments of an exited instance", "instance", in.id, "error", err)
	} else if n > 0 {
		s.logger.Info("removed shared-memory segments of an exited instance", "instance", in.id, "count", n)
	}
	// Its rooms are gone with it: every request using it fails this
	// attempt, removes its other rooms in order, and is dispatched again.
	for _, a := range users {
		a.cancel(dead)
	}
	// Its spares too: the sides standing by for them go.
	s.exitedSpares(l)
	if dead.Lost == "" {
		s.crashes.Add(1)
	}
	l.proc.kill() // its process group, and go-plugin's state
	if dead.Lost != "" {
		// Its host is gone: it comes back with its host, as a new
		// instance (remote.go).
		s.dropRemote(in)
		return
	}

	in.mu.Lock()
	if in.state == stateReleased || in.state == stateDraining {
		in.lastExit = dead.Error()
		in.mu.Unlock()
		return // not restarted: a scale-in retires it
	}
	in.lastExit = dead.Error()
	delay, ok := in.restart.next(time.Now())
	if !ok {
		in.state = stateFailed
		in.mu.Unlock()
		s.logger.Error("phase instance failed: too many restarts; not restarting it",
			"instance", in.id, "restarts", in.cfg.Restart.Max, "window", in.cfg.Restart.Window)
		s.readyChanged()
		return
	}
	in.state = stateRestarting
	in.mu.Unlock()
	s.readyChanged()
	s.background(func() { s.restartInstance(in, delay) })
}

// restartInstance starts the instance again after delay, by its restart
// rule: a start that fails is handled like an exit (again, or failed).
func (s *Supervisor) restartInstance(in *instance, delay time.Duration) {
	start := func(ctx context.Context) error {
		l, err := s.launch(ctx, in)
		if err != nil {
			return err
		}
		in.mu.Lock()
		released := in.state == stateReleased || in.state == stateDraining || ctx.Err() != nil
		in.mu.Unlock()
		if released {
			l.proc.kill()
			return nil // nothing to restart any more
		}
		s.logger.Info("phase instance restarted", "instance", in.id, "pid", l.proc.pid, "restarts", in.restart.counts())
		s.goLive(in, l)
		s.fillSpare(l)
		return nil
	}
	failed := func(err error) {
		in.mu.Lock()
		in.lastExit = "restart failed: " + err.Error()
		in.mu.Unlock()
		s.logger.Error("restart phase instance", "instance", in.id, "error", err)
	}
	err := in.restart.run(s.bgCtx, delay, start, failed)
	if !errors.Is(err, errGaveUp) {
		return // restarted, or released
	}
	in.mu.Lock()
	if in.state != stateReleased {
		in.state = stateFailed
	}
	in.mu.Unlock()
	s.logger.Error("phase instance failed; not restarting it", "instance", in.id, "why", err)
	s.readyChanged()
}

// awaitReady makes the readiness call, bounded by the phase's
// ready_timeout: the handshake proved the process alive, this says it has
// loaded what it needs and takes requests.
func (s *Supervisor) awaitReady(ctx context.Context, l *life) error {
	rctx, cancel := context.WithTimeout(ctx, l.in.cfg.ReadyTimeout)
	defer cancel()
	if err := l.ctl.Ready(rctx); err != nil {
		if ctx.Err() == nil && timedOut(rctx, err) {
			return fmt.Errorf("instance %s: not ready within ready_timeout %s: %w", l.in.id, l.in.cfg.ReadyTimeout, err)
		}
		return fmt.Errorf("instance %s: ready: %w", l.in.id, err)
	}
	return nil
}

// follow reads the process's progress stream while it lives and keeps a
// hang watchdog per request it works on: computing or sending with no
// report within the phase's hang_timeout kills the process, which is then
// handled as a crash. Waiting for inputs does not count (that is the
// upstream instance's time). Since the transformer reports every step, the
// deadline scales with the request's work.
func (s *Supervisor) follow(l *life) {
	defer l.stopWatchdogs()
	on := func(p sdk.Progress) {
		l.progressed(s, p)
		s.requestProgress(l.in, p)
	}
	// A stream that breaks while the process lives is opened again (its
	// first events are the latest of every request in flight).
	for {
		err := l.ctl.Progress(s.bgCtx, on)
		if errors.Is(err, sdk.ErrNoProgress) {
			s.logger.Warn("the phase plugin reports no progress: hang detection is off for it", "instance", l.in.id)
			return
		}
		t := time.NewTimer(time.Second)
		select {
		case <-l.proc.done:
			t.Stop()
			return
		case <-s.bgCtx.Done():
			t.Stop()
			return
		case <-t.C:
			s.logger.Debug("progress stream ended; opening it again", "instance", l.in.id, "error", err)
		}
	}
}

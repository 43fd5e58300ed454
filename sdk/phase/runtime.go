package phase

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// Runtime serves sdk.PhaseControl around an author's sdk.Phase inside a
// phase plugin process. It owns the process's transfer manager, the goroutine
// that runs the phase's Load, and the hub of its Progress streams, and maps
// rooms to the Run calls that use them, so that removing a room also stops
// the computation that waits on it.
type Runtime struct {
	phase    sdk.Phase
	logger   hclog.Logger
	progress progressHub
	// What Status reports of the Runs: how many succeeded and failed, and
	// the time their phase's Run computed, in all.
	runsOK, runsFailed atomic.Uint64
	computeNanos       atomic.Int64
	credits            credits
	batch              *batcher // a phase that batches (sdk.BatchPhase), from Configure; else nil

	mu       sync.Mutex
	mgr      *transfer.Manager // nil until Configure
	instance string
	released bool
	runs     map[uint64]context.CancelFunc // room -> cancel of the Run using it
	active   sync.WaitGroup                // Runs in progress; Release waits for them
	// loaded is made by Configure and closed when the phase's Load has
	// returned (at once without Loader); loadErr is its error, set
	// before loaded is closed and read only after.
	loaded     chan struct{}
	loadErr    error
	cancelLoad context.CancelFunc // nil without sdk.Loader
}

// New returns the runtime of p, logging to logger (nil: no logs). It has no
// side effects: Configure starts the transfer manager.
func New(p sdk.Phase, logger hclog.Logger) *Runtime {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Runtime{phase: p, logger: logger, runs: make(map[uint64]context.CancelFunc)}
}

// instanceName is what an instance id may look like: it becomes part of
// shared-memory segment names.
var instanceName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,48}$`)

// Info is the phase's, with the optional parts of the API that the
// runtime implements added to its features.
func (r *Runtime) Info(ctx context.Context) (sdk.Info, error) {
	info, err := r.phase.Info(ctx)
	if err == nil && !info.Has(sdk.FeatureStandbyReceiver) {
		info.Features = append(slices.Clip(info.Features), sdk.FeatureStandbyReceiver)
	}
	if _, ok := r.phase.(sdk.BatchPhase); ok && err == nil && !info.Has(sdk.FeatureBatch) {
		info.Features = append(slices.Clip(info.Features), sdk.FeatureBatch)
	}
	return info, err
}

func (r *Runtime) Configure(ctx context.Context, cfg sdk.InstanceConfig) error {
	if !instanceName.MatchString(cfg.Instance) {
		return fmt.Errorf("%w: instance id %q must match %s", sdk.ErrInvalid, cfg.Instance, instanceName)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mgr != nil {
		return fmt.Errorf("%w: instance %s is already configured", sdk.ErrInvalid, r.instance)
	}
	if r.released {
		return transfer.ErrReleased
	}
	switch cfg.Device {
	case "", sdk.DeviceCPU, sdk.DeviceCUDA:
	default:
		return fmt.Errorf("%w: device %q: want %q or %q", sdk.ErrInvalid, cfg.Device, sdk.DeviceCPU, sdk.DeviceCUDA)
	}
	bp, batches := r.phase.(sdk.BatchPhase)
	switch {
	case cfg.MaxRooms < 0 || cfg.MaxInputBytes < 0:
		return fmt.Errorf("%w: max_rooms %d, max_input_bytes %d: want 0 (no limit) or more", sdk.ErrInvalid, cfg.MaxRooms, cfg.MaxInputBytes)
	case cfg.Batch.MaxSize < 0 || cfg.Batch.MaxSize > MaxBatch || cfg.Batch.MaxWait < 0:
		return fmt.Errorf("%w: batch max size %d, max wait %s: want 0 to %d, and 0 or more", sdk.ErrInvalid, cfg.Batch.MaxSize, cfg.Batch.MaxWait, MaxBatch)
	case cfg.Batch.MaxSize > 1 && !batches:
		return fmt.Errorf("%w: batch max size %d: the phase does not batch (it implements no sdk.BatchPhase)", sdk.ErrInvalid, cfg.Batch.MaxSize)
	}
	logger := r.logger.Named(cfg.Instance)
	curve, err := transfer.CurveFromEnv()
	if err != nil {
		return err
	}
	mgr, err := transfer.New(transfer.Config{
		Dir:         cfg.RunDir,
		Name:        transfer.ProcessName(cfg.Instance, os.Getpid()),
		ZMQHost:     cfg.ZMQHost,
		PeerTimeout: cfg.PeerTimeout,
		CUDA:        cfg.Device == sdk.DeviceCUDA,
		Curve:       curve,
		Logger:      logger.Named("transfer"),
	})
	if err != nil {
		return err
	}
	if err := mgr.Start(); err != nil {
		return err
	}
	// The author's Configure runs once, after everything that can fail
	// before it.
	if c, ok := r.phase.(sdk.Configurer); ok {
		if err := c.Configure(ctx, sdk.Config{Instance: cfg.Instance, Params: cfg.Params, Logger: logger}); err != nil {
			return errors.Join(err, mgr.Release(ctx))
		}
	}
	r.mgr, r.instance = mgr, cfg.Instance
	r.credits.set(cfg)
	if batches {
		limits := bp.BatchLimits()
		if cfg.Batch.MaxSize > 0 {
			limits = cfg.Batch
		}
		if limits.MaxSize = min(limits.MaxSize, MaxBatch); limits.MaxSize > 1 {
			r.batch = startBatcher(bp, limits, r)
			logger.Info("batching", "max_size", limits.MaxSize, "max_wait", limits.MaxWait)
		}
	}
	r.loaded = make(chan struct{})
	logger.Info("configured", "run_dir", cfg.RunDir)
	l, ok := r.phase.(sdk.Loader)
	if !ok {
		close(r.loaded)
		return nil
	}
	// The load outlives this call: it ends when Load returns, which
	// Release hastens by cancelling lctx and waits for.
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancelLoad = cancel
	go r.load(lctx, l, logger)
	return nil
}

// load runs the phase's Load and records its outcome for Ready. A panic in
// Load fails the load, not the process.
func (r *Runtime) load(ctx context.Context, l sdk.Loader, logger hclog.Logger) {
	defer close(r.loaded)
	start := time.Now()
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				logger.Error("Load panicked", "panic", p, "stack", string(debug.Stack()))
				err = fmt.Errorf("the phase panicked: %v", p)
			}
		}()
		return l.Load(ctx)
	}()
	r.loadErr = err
	if err == nil {
		logger.Info("loaded", "took", time.Since(start).Round(time.Millisecond))
	}
}

// Ready returns once the phase's Load has returned: nil, or its error.
func (r *Runtime) Ready(ctx context.Context) error {
	r.mu.Lock()
	loaded, released := r.loaded, r.released
	r.mu.Unlock()
	if loaded == nil {
		if released {
			return transfer.ErrReleased
		}
		return fmt.Errorf("%w: instance is not configured", sdk.ErrInvalid)
	}
	select {
	case <-loaded:
	default: // still loading: wait, unless ctx has ended
		select {
		case <-loaded:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	released = r.released
	r.mu.Unlock()
	switch {
	case released:
		return transfer.ErrReleased
	case r.loadErr != nil:
		return fmt.Errorf("loading: %w", r.loadErr)
	}
	return nil
}

// readyLocked returns an error, with r.mu held, until the instance can
// take requests.
func (r *Runtime) readyLocked() error {
	if r.released {
		return transfer.ErrReleased
	}
	if r.mgr == nil {
		return fmt.Errorf("%w: instance is not configured", sdk.ErrInvalid)
	}
	select {
	case <-r.loaded:
	default:
		return fmt.Errorf("instance %s is still loading; call Ready first", r.instance)
	}
	if r.loadErr != nil {
		return fmt.Errorf("instance %s failed to load: %w", r.instance, r.loadErr)
	}
	return nil
}

// manager returns the transfer manager, or an error before Configure.
func (r *Runtime) manager() (*transfer.Manager, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.managerLocked()
}

// managerLocked is manager with r.mu held.
func (r *Runtime) managerLocked() (*transfer.Manager, error) {
	if r.mgr == nil {
		return nil, fmt.Errorf("%w: instance is not configured", sdk.ErrInvalid)
	}
	return r.mgr, nil
}

func (r *Runtime) OpenRoom(ctx context.Context, spec sdk.RoomSpec) (string, error) {
	r.mu.Lock()
	mgr, err := r.mgr, r.readyLocked()
	r.mu.Unlock()
	if err != nil {
		return "", err
	}
	if spec.Room == 0 {
		return "", fmt.Errorf("%w: room id 0 is reserved", sdk.ErrInvalid)
	}
	backend, err := sdk.ParseBackend(string(spec.Backend))
	if err != nil {
		return "", fmt.Errorf("%w: room %d: %v", sdk.ErrInvalid, spec.Room, err)
	}
	switch {
	case spec.Standby && spec.Role != sdk.RoleReceiver:
		return "", fmt.Errorf("%w: room %d: only a receiver side stands by", sdk.ErrInvalid, spec.Room)
	case spec.Role == sdk.RoleSender:
		return mgr.OpenSenderWith(spec.Room, backend)
	case spec.Standby:
		return "", mgr.OpenStandby(spec.Room, backend, spec.PeerEndpoint)
	case spec.Role == sdk.RoleReceiver:
		specs, err := r.phase.Inputs(ctx, spec.Request)
		if err != nil {
			return "", fmt.Errorf("room %d: inputs of request %s: %w", spec.Room, spec.Request.ID, err)
		}
		var n int64
		for _, s := range specs {
			if b, err := s.NumBytes(); err == nil {
				n += b
			}
		}
		took, err := r.credits.take(spec.Room, n)
		if err != nil {
			return "", fmt.Errorf("room %d: %w", spec.Room, err)
		}
		if err := mgr.OpenReceiverWith(spec.Room, backend, spec.PeerEndpoint, specs); err != nil {
			if took {
				r.credits.give(spec.Room)
			}
			return "", err
		}
		return "", nil
	}
	return "", fmt.Errorf("%w: room %d: unknown role %v", sdk.ErrInvalid, spec.Room, spec.Role)
}

func (r *Runtime) Run(ctx context.Context, spec sdk.RunSpec) (sdk.RunResult, error) {
	res, err := r.run(ctx, spec)
	if err != nil {
		r.runsFailed.Add(1)
		return res, err
	}
	r.runsOK.Add(1)
	r.settle(spec, &res)
	return res, nil
}

// settle removes, after a Run that succeeded, the room sides the
// supervisor would otherwise remove with a RemoveRoom each, where the
// order of invariant 1 already holds: the out room's sender side when
// its Send was drained (nothing of it queued; the receiver side is still
// open), and the in room's receiver side when its sender has let go of
// it (transfer.Manager.SenderLeft). It says so in res (OutRemoved,
// InRemoved). The removals end after the answer (RemoveSoon: the sides
// are failed and out of Rooms at once, their sockets close a moment
// later), so that the request's next step does not wait for them. A side
// that does not qualify is left to the supervisor's RemoveRoom.
func (r *Runtime) settle(spec sdk.RunSpec, res *sdk.RunResult) {
	mgr, err := r.manager()
	if err != nil {
		return
	}
	if spec.OutRoom != 0 && res.OutDrained {
		mgr.RemoveSoon(spec.OutRoom)
		res.OutRemoved = true
	}
	if spec.InRoom != 0 && mgr.SenderLeft(spec.InRoom) {
		mgr.RemoveSoon(spec.InRoom)
		r.credits.give(spec.InRoom)
		res.InRemoved = true
	}
}

func (r *Runtime) run(ctx context.Context, spec sdk.RunSpec) (sdk.RunResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rooms := []uint64{spec.InRoom, spec.OutRoom}
	mgr, err := r.track(rooms, cancel)
	if err != nil {
		return sdk.RunResult{}, err
	}
	defer r.untrack(rooms)
	rep := &runReporter{hub: &r.progress, request: spec.Request.ID, inRoom: spec.InRoom, outRoom: spec.OutRoom}
	rep.publish(sdk.StageWaiting, 0, 0)
	defer rep.publish(sdk.StageFinished, 0, 0)

	var in []tensor.Tensor
	if spec.InRoom != 0 {
		ts, done, err := mgr.Receive(ctx, spec.InRoom)
		if err != nil {
			return sdk.RunResult{}, fmt.Errorf("receive room %d: %w", spec.InRoom, err)
		}
		defer done()
		in = ts
		if dp, ok := r.phase.(sdk.DevicePhase); !ok || !dp.TakesDeviceTensors() {
			if in, err = hostCopies(ts, mgr.CopyToHost); err != nil {
				return sdk.RunResult{}, fmt.Errorf("receive room %d: %w", spec.InRoom, err)
			}
		}
	}
	runCtx := r.checkpointContext(rep.context(ctx), spec.Request, in, rep)
	if b, err := mgr.Backend(spec.OutRoom); spec.OutRoom != 0 && err == nil && b == sdk.BackendShm {
		// Outputs the phase writes into sdk.Alloc's memory are lent to
		// the next phase on this host, not copied; they go back to the
		// manager once the Run is over (a lent one when the receiver
		// gives it back). Other hops get ordinary memory.
		outs := &runAllocator{mgr: mgr}
		defer outs.free()
		runCtx = sdk.WithAllocator(runCtx, outs)
	}
	out, err := r.compute(runCtx, spec.Request, in, rep)
	if err != nil {
		return sdk.RunResult{}, err
	}
	if spec.OutRoom == 0 {
		if out.Artifact == nil {
			return sdk.RunResult{}, errors.New("the last phase of the pipeline returned no artifact")
		}
		return sdk.RunResult{Artifact: out.Artifact}, nil
	}
	rep.publish(sdk.StageSending, 0, 0)
	sent := time.Now()
	n, err := mgr.SendN(ctx, spec.OutRoom, out.Tensors)
	if err != nil {
		return sdk.RunResult{}, fmt.Errorf("send room %d: %w", spec.OutRoom, err)
	}
	return sdk.RunResult{SentBytes: n, SendTime: time.Since(sent), OutDrained: mgr.Drained(spec.OutRoom)}, nil
}

// runAllocator is the sdk.Allocator of one Run: it takes output memory
// from the transfer manager and gives it all back when the Run ends.
type runAllocator struct {
	mgr  *transfer.Manager
	mu   sync.Mutex
	held []tensor.Tensor
}

func (a *runAllocator) Alloc(spec tensor.Spec) (tensor.Tensor, error) {
	t, err := a.mgr.Alloc(spec)
	if err != nil {
		return t, err
	}
	a.mu.Lock()
	a.held = append(a.held, t)
	a.mu.Unlock()
	return t, nil
}

func (a *runAllocator) Written(t tensor.Tensor, sum uint64) error { return a.mgr.Written(t, sum) }

func (a *runAllocator) free() {
	a.mu.Lock()
	held := a.held
	a.held = nil
	a.mu.Unlock()
	for _, t := range held {
		a.mgr.Free(t)
	}
}

// hostCopies returns ts with every tensor in device memory replaced by a
// copy in host memory, made by toHost; host tensors are passed through.
func hostCopies(ts []tensor.Tensor, toHost func(dst []byte, t tensor.Tensor) error) ([]tensor.Tensor, error) {
	if !slices.ContainsFunc(ts, tensor.Tensor.OnDevice) {
		return ts, nil
	}
	out := slices.Clone(ts)
	for i, t := range ts {
		if !t.OnDevice() {
			continue
		}
		n, err := t.NumBytes()
		if err != nil {
			return nil, err
		}
		out[i] = tensor.Tensor{Spec: t.Spec, Data: make([]byte, n)}
		if err := toHost(out[i].Data, t); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// compute runs the phase on one Run's inputs: in a batch when the phase
// batches, else at once, on the Run's goroutine.
func (r *Runtime) compute(ctx context.Context, req sdk.Request, in []tensor.Tensor, rep *runReporter) (sdk.Output, error) {
	if r.batch != nil {
		return r.batch.compute(ctx, req, in, rep)
	}
	rep.startComputing()
	// On one CPU (GOMAXPROCS=1, as the supervisor gives a process on a
	// small host) the Progress stream would send "computing" only once
	// the phase yields, often when it is done: let it go first.
	runtime.Gosched()
	began := time.Now()
	out, err := r.runPhase(ctx, req, in)
	r.computeNanos.Add(int64(time.Since(began)))
	rep.stopComputing(err == nil)
	return out, err
}

// MaxBatch bounds a batch's size.
const MaxBatch = 1024

// runPhase calls the phase's Run; a panic in it fails this request with
// the panic's value instead of taking the process and every other request
// down with it.
func (r *Runtime) runPhase(ctx context.Context, req sdk.Request, in []tensor.Tensor) (out sdk.Output, err error) {
	// An input lent by a zero-copy hand-off is a read-only mapping: a
	// write to it faults, and the fault becomes this Run's panic instead
	// of ending the process.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			r.logger.Error("phase panicked", "request", req.ID, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("the phase panicked: %v", p)
			if _, fault := p.(interface{ Addr() uintptr }); fault {
				err = fmt.Errorf("%w (inputs are read-only, and may be a mapping of the sender's memory: copy an input to change it)", err)
			}
		}
	}()
	return r.phase.Run(ctx, req, in)
}

// track registers a Run: cancel stops it when one of its rooms is removed
// or the instance is released, and Release waits for it to return. It
// fails before Configure, while the phase loads and after Release.
func (r *Runtime) track(rooms []uint64, cancel context.CancelFunc) (*transfer.Manager, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.readyLocked(); err != nil {
		return nil, err
	}
	mgr := r.mgr
	for _, room := range rooms {
		if room != 0 {
			r.runs[room] = cancel
		}
	}
	r.active.Add(1)
	return mgr, nil
}

func (r *Runtime) untrack(rooms []uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, room := range rooms {
		delete(r.runs, room)
	}
	r.active.Done()
}

func (r *Runtime) RemoveRoom(_ context.Context, room uint64) error {
	mgr, err := r.manager()
	if err != nil {
		return err
	}
	r.mu.Lock()
	cancel := r.runs[room]
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	defer r.credits.give(room)
	return mgr.Remove(room)
}

func (r *Runtime) Status(context.Context) (sdk.InstanceStatus, error) {
	mgr, err := r.manager()
	if err != nil {
		return sdk.InstanceStatus{}, err
	}
	return sdk.InstanceStatus{Rooms: mgr.Rooms(), DroppedFrames: mgr.Dropped(), DroppedProgress: r.progress.dropped.Load(), Metrics: r.metrics(mgr)}, nil
}

// metrics are the instance's own figures for the supervisor's /metrics.
func (r *Runtime) metrics(mgr *transfer.Manager) []sdk.Metric {
	ms := []sdk.Metric{
		{Name: "runs_total", Help: "Runs of this instance, by outcome.", Counter: true, Labels: map[string]string{"outcome": "ok"}, Value: float64(r.runsOK.Load())},
		{Name: "runs_total", Help: "Runs of this instance, by outcome.", Counter: true, Labels: map[string]string{"outcome": "failed"}, Value: float64(r.runsFailed.Load())},
		{Name: "compute_seconds_total", Help: "Time the phase's Run computed, all Runs together.", Counter: true, Value: time.Duration(r.computeNanos.Load()).Seconds()},
		{Name: "steps_total", Help: "Units of work (denoising steps) the phase reported done.", Counter: true, Value: float64(r.progress.units.Load())},
		{Name: "transfer_dropped_frames_total", Help: "Frames from the network the transfer manager dropped.", Counter: true, Value: float64(mgr.Dropped())},
		{Name: "progress_dropped_total", Help: "Progress events dropped by streams too slow to read them.", Counter: true, Value: float64(r.progress.dropped.Load())},
	}
	ms = append(ms, r.credits.metrics()...)
	ms = append(ms, r.batch.metrics()...)
	for _, c := range mgr.Counters() {
		b := map[string]string{"backend": string(c.Backend)}
		ms = append(ms,
			sdk.Metric{Name: "transfer_sent_total", Help: "Tensor sets sent into rooms, by backend.", Counter: true, Labels: b, Value: float64(c.Sent)},
			sdk.Metric{Name: "transfer_sent_bytes_total", Help: "Bytes sent into rooms, by backend.", Counter: true, Labels: b, Value: float64(c.SentBytes)},
			sdk.Metric{Name: "transfer_send_seconds_total", Help: "Time sends took, from the call to the receiver's Success, by backend.", Counter: true, Labels: b, Value: c.SendTime.Seconds()},
			sdk.Metric{Name: "transfer_received_total", Help: "Tensor sets received from rooms, by backend.", Counter: true, Labels: b, Value: float64(c.Received)},
			sdk.Metric{Name: "transfer_received_bytes_total", Help: "Bytes received from rooms, by backend.", Counter: true, Labels: b, Value: float64(c.ReceivedBytes)},
		)
	}
	return ms
}

// ValidateParams checks params with the phase's ParamsValidator, without
// Configure; a phase without one cannot check them before it loads.
func (r *Runtime) ValidateParams(ctx context.Context, params map[string]string) ([]sdk.ParamProblem, error) {
	v, ok := r.phase.(sdk.ParamsValidator)
	if !ok {
		return nil, fmt.Errorf("%w: the phase does not implement sdk.ParamsValidator", sdk.ErrNoValidation)
	}
	return v.ValidateParams(ctx, params)
}

// Progress follows the instance's progress events until ctx ends or the
// instance is released.
func (r *Runtime) Progress(ctx context.Context, fn func(sdk.Progress)) error {
	sub, err := r.progress.subscribe()
	if err != nil {
		return err
	}
	defer func() {
		r.progress.unsubscribe(sub)
		r.logger.Debug("progress stream ended", "dropped", sub.dropped.Load())
	}()
	sub.follow(ctx, fn)
	return nil
}

func (r *Runtime) Release(ctx context.Context) error {
	r.mu.Lock()
	if r.released {
		r.mu.Unlock()
		return nil
	}
	r.released = true
	mgr, loaded := r.mgr, r.loaded
	for _, cancel := range r.runs {
		cancel()
	}
	if r.cancelLoad != nil {
		r.cancelLoad()
	}
	batch := r.batch
	r.mu.Unlock()
	if batch != nil {
		batch.close()
	}
	// The phase's Close must not run under a Run still computing or a
	// Load still loading.
	var errs []error
	idle := make(chan struct{})
	go func() {
		r.active.Wait()
		if batch != nil {
			<-batch.done
		}
		close(idle)
	}()
	select {
	case <-idle:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("release: Run calls still in progress: %w", ctx.Err()))
	}
	if loaded != nil {
		select {
		case <-loaded:
		default:
			select {
			case <-loaded:
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("release: the phase's Load has not returned: %w", ctx.Err()))
			}
		}
	}
	// After the Runs' last events: the streams deliver them, then end.
	r.progress.close()
	if mgr != nil {
		errs = append(errs, mgr.Release(ctx))
	}
	if c, ok := r.phase.(sdk.Closer); ok {
		errs = append(errs, c.Close(ctx))
	}
	return errors.Join(errs...)
}

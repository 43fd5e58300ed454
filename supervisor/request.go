package supervisor

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/phased/phased/sdk"
)

// Request states. A request ends done or failed, never silently dropped.
const (
	StateQueued  = "queued"
	StateRunning = "running"
	StateDone    = "done"
	StateFailed  = "failed"
)

// Reasons of requests that did not fail on their own.
const (
	ReasonRemoved  = "removed"
	ReasonReleased = "released: the supervisor was released before the request finished"
)

// Submission is what a client asks for.
type Submission struct {
	Prompt string `json:"prompt"`
	Seed   int64  `json:"seed"`
	Steps  int    `json:"steps"`
	// Key is what requests that belong together share (a LoRA, a model
	// variant): the affinity policy keeps one key on one instance.
	Key string `json:"key,omitempty"`
}

// MaxKeyLen bounds a submission's key.
const MaxKeyLen = 256

// Validate checks a submission from a user: a prompt and at least one step.
func (s Submission) Validate() error {
	switch {
	case s.Prompt == "":
		return fmt.Errorf("%w: prompt must not be empty", ErrBadInput)
	case len(s.Prompt) > 64<<10:
		return fmt.Errorf("%w: prompt is %d bytes; at most 65536 are accepted", ErrBadInput, len(s.Prompt))
	case s.Steps <= 0 || s.Steps > 10000:
		return fmt.Errorf("%w: steps must be between 1 and 10000, got %d", ErrBadInput, s.Steps)
	case len(s.Key) > MaxKeyLen:
		return fmt.Errorf("%w: key is %d bytes; at most %d are accepted", ErrBadInput, len(s.Key), MaxKeyLen)
	}
	return nil
}

// Event is one step of a request's progress.
type Event struct {
	Time     time.Time `json:"time"`
	Phase    string    `json:"phase,omitempty"`
	Instance string    `json:"instance,omitempty"`
	What     string    `json:"what"` // "accepted", "scheduled", "rooms open", "phase done", "done", "failed"
	Detail   string    `json:"detail,omitempty"`
}

// RequestInfo is a snapshot of one request, as the control API shows it.
type RequestInfo struct {
	ID        string            `json:"id"`
	State     string            `json:"state"`
	Prompt    string            `json:"prompt"`
	Seed      int64             `json:"seed"`
	Steps     int               `json:"steps"`
	Key       string            `json:"key,omitempty"`
	Instances map[string]string `json:"instances,omitempty"` // phase -> instance
	Rooms     []uint64          `json:"rooms,omitempty"`     // one per hop, upstream first
	Backends  []string          `json:"backends,omitempty"`  // each hop's transfer backend
	Artifact  string            `json:"artifact,omitempty"`
	SHA256    string            `json:"sha256,omitempty"`
	Reason    string            `json:"reason,omitempty"`
	// Attempts counts the dispatches: more than one when an instance the
	// request used exited or hung and it was dispatched again.
	Attempts  int        `json:"attempts,omitempty"`
	Submitted time.Time  `json:"submitted"`
	Finished  *time.Time `json:"finished,omitempty"`
	Events    []Event    `json:"events,omitempty"`
}

// finished reports whether the request has ended and its end is journaled
// (done is closed after both).
func (r *request) finished() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Terminal reports whether the request has ended.
func (r RequestInfo) Terminal() bool { return r.State == StateDone || r.State == StateFailed }

// request is a request's state in the supervisor. Fields after mu are
// guarded by it.
type request struct {
	sub    Submission
	id     string
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when terminal

	mu      sync.Mutex
	info    RequestInfo
	removed bool
	changed chan struct{} // closed and replaced on every change
}

func (r *request) snapshot() RequestInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	info := r.info
	info.Events = append([]Event(nil), r.info.Events...)
	info.Rooms = append([]uint64(nil), r.info.Rooms...)
	info.Backends = append([]string(nil), r.info.Backends...)
	return info
}

// event records a progress event and wakes watchers.
func (r *request) event(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e.Time = time.Now()
	r.info.Events = append(r.info.Events, e)
	close(r.changed)
	r.changed = make(chan struct{})
}

// Submit accepts a request and dispatches it; it returns the request id.
// The submission is not validated here beyond what the pipeline needs (a
// prompt, steps >= 0): user input is checked by Submission.Validate in the
// control API.
func (s *Supervisor) Submit(sub Submission) (string, error) {
	if sub.Prompt == "" || sub.Steps < 0 {
		return "", fmt.Errorf("%w: a prompt and steps >= 0 are required", ErrBadInput)
	}
	s.mu.Lock()
	if s.closing || !s.started {
		s.mu.Unlock()
		return "", ErrReleasing
	}
	id := fmt.Sprintf("r%06d", s.nextReq.Add(1))
	// Counted in flight from here: release waits for it (and keeps the
	// journal open) until it is accepted or refused.
	s.inflight.Add(1)
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(s.ctx)
	r := &request{
		sub: sub, id: id, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), changed: make(chan struct{}),
		info: RequestInfo{ID: id, State: StateQueued, Prompt: sub.Prompt, Seed: sub.Seed, Steps: sub.Steps, Key: sub.Key, Submitted: time.Now()},
	}
	r.info.Events = []Event{{Time: r.info.Submitted, What: "accepted"}}
	// On disk before it is acknowledged: a supervisor started after a
	// crash finds it. The write (an fsync) is made outside s.mu, so that
	// status and watchers do not wait for the disk.
	if s.journal != nil {
		if err := s.journal.put(r.info); err != nil {
			cancel()
			s.inflight.Done()
			return "", fmt.Errorf("request not accepted: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		// Release began meanwhile: not accepted, and so journaled.
		defer s.inflight.Done()
		cancel()
		if s.journal != nil {
			now := time.Now()
			r.info.State, r.info.Reason, r.info.Finished = StateFailed, ReasonReleased, &now
			if err := s.journal.put(r.info); err != nil {
				s.logger.Error("journal a request refused at release", "request", id, "error", err)
			}
		}
		return "", ErrReleasing
	}
	s.prune()
	s.requests[id] = r
	s.order = append(s.order, id)
	go func() {
		defer s.inflight.Done()
		s.process(r)
	}()
	return id, nil
}

// MaxRetained is how many requests the supervisor remembers; past it, the
// oldest ended ones are forgotten.
const MaxRetained = 10000

// prune forgets the oldest ended requests beyond MaxRetained; s.mu is held.
func (s *Supervisor) prune() {
	if len(s.order) < MaxRetained {
		return
	}
	kept := s.order[:0]
	drop := len(s.order) - MaxRetained + 1
	var forgotten []string
	for _, id := range s.order {
		if drop > 0 {
			if r := s.requests[id]; r.finished() {
				delete(s.requests, id)
				forgotten = append(forgotten, id)
				drop--
				continue
			}
		}
		kept = append(kept, id)
	}
	s.order = kept
	if s.journal != nil {
		if err := s.journal.forget(forgotten); err != nil {
			s.logger.Warn("forget old requests in the journal", "error", err)
		}
	}
}

func (s *Supervisor) lookup(id string) (*request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.requests[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return r, nil
}

// Request returns a snapshot of one request.
func (s *Supervisor) Request(id string) (RequestInfo, error) {
	r, err := s.lookup(id)
	if err != nil {
		return RequestInfo{}, err
	}
	return r.snapshot(), nil
}

// Watch calls fn with each new snapshot of the request (the first one at
// once) until the request ends or ctx is done.
func (s *Supervisor) Watch(ctx context.Context, id string, fn func(RequestInfo) error) error {
	r, err := s.lookup(id)
	if err != nil {
		return err
	}
	for {
		r.mu.Lock()
		changed := r.changed
		r.mu.Unlock()
		info := r.snapshot()
		if err := fn(info); err != nil {
			return err
		}
		if info.Terminal() {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Wait blocks until the request ends (or ctx is done) and returns it.
func (s *Supervisor) Wait(ctx context.Context, id string) (RequestInfo, error) {
	r, err := s.lookup(id)
	if err != nil {
		return RequestInfo{}, err
	}
	select {
	case <-r.done:
		return r.snapshot(), nil
	case <-ctx.Done():
		return r.snapshot(), ctx.Err()
	}
}

// Remove ends a request: its computation is cancelled, its rooms are removed
// upstream → downstream, and it ends failed with reason "removed". It
// returns the final state; removing an ended request changes nothing.
func (s *Supervisor) Remove(ctx context.Context, id string) (RequestInfo, error) {
	r, err := s.lookup(id)
	if err != nil {
		return RequestInfo{}, err
	}
	r.mu.Lock()
	removing := !r.info.Terminal() && !r.removed
	if removing {
		r.removed = true
	}
	r.mu.Unlock()
	if removing && s.journal != nil {
		// Journaled as removed at once: a supervisor that dies while
		// the rooms are being removed must not run it again.
		info := r.snapshot()
		now := time.Now()
		info.State, info.Reason, info.Finished = StateFailed, ReasonRemoved, &now
		if err := s.journal.put(info); err != nil {
			s.logger.Error("journal a removal", "request", id, "error", err)
		}
	}
	r.cancel()
	return s.Wait(ctx, id)
}

// process runs one request through the pipeline and always ends it. An
// attempt that fails because an instance it used exited or hung is
// dispatched again, with new rooms, while the retry budget lasts.
func (s *Supervisor) process(r *request) {
	defer r.cancel()
	var art *sdk.Artifact
	var err error
	// Queued until one of MaxInflight slots is free; the slot is held
	// until the request's rooms are removed.
	select {
	case s.slots <- struct{}{}:
		for n := 0; ; n++ {
			art, err = s.dispatch(r, n)
			var ie *InstanceError
			if err == nil || r.ctx.Err() != nil || n >= s.cfg.Retries || !errors.As(err, &ie) {
				break
			}
			s.retried.Add(1)
			r.event(Event{What: "retry", Detail: fmt.Sprintf("attempt %d of %d: %v", n+2, s.cfg.Retries+1, err)})
			s.logger.Warn("dispatching the request again", "request", r.id, "attempt", n+2, "cause", err)
		}
		<-s.slots
	case <-r.ctx.Done():
		err = r.ctx.Err()
	}
	// Rooms were removed on every path, upstream first, before the
	// request is reported as ended.
	r.mu.Lock()
	now := time.Now()
	r.info.Finished = &now
	var ie *InstanceError
	switch {
	case r.removed:
		// Removed, even if it finished meanwhile: as journaled at Remove.
		r.info.State, r.info.Reason = StateFailed, ReasonRemoved
	case err != nil && s.ctx.Err() != nil:
		r.info.State, r.info.Reason = StateFailed, ReasonReleased
	case errors.As(err, &ie):
		r.info.State = StateFailed
		r.info.Reason = fmt.Sprintf("failed after %d attempts (retries = %d); the last: %v; raise retries in the config, or see `supervisor status` for the instance",
			r.info.Attempts, s.cfg.Retries, err)
	case err != nil:
		r.info.State, r.info.Reason = StateFailed, err.Error()
	default:
		r.info.State, r.info.Artifact, r.info.SHA256 = StateDone, art.Path, art.SHA256
	}
	state, reason := r.info.State, r.info.Reason
	r.mu.Unlock()
	s.ended(r)
	r.event(Event{What: state, Detail: reason})
	close(r.done)
	s.logger.Info("request ended", "request", r.id, "state", state, "reason", reason, "took", now.Sub(r.info.Submitted))
}

// attempt is one dispatch of a request: the instance processes it was
// given, its rooms, and its context, which the supervisor cancels with an
// InstanceError when one of those processes exits or hangs.
type attempt struct {
	r      *request
	ctx    context.Context
	cancel context.CancelCauseFunc
	lives  []*life    // per phase
	opened []roomSide // every room side asked to open, upstream first
}

// roomSide is one side of a hop's room on one instance process.
type roomSide struct {
	l    *life
	room uint64
}

// cause returns the InstanceError that ended the attempt, or err.
func (a *attempt) cause(err error) error {
	if err == nil {
		return nil
	}
	var ie *InstanceError
	if c := context.Cause(a.ctx); errors.As(c, &ie) {
		return ie
	}
	return err
}

// dispatch makes attempt n of the request: it schedules it, opens its rooms
// upstream first, runs every phase and removes the rooms in order; it
// returns the last phase's artifact.
func (s *Supervisor) dispatch(r *request, n int) (*sdk.Artifact, error) {
	a := &attempt{r: r}
	a.ctx, a.cancel = context.WithCancelCause(r.ctx)
	defer a.cancel(nil)
	chosen, rooms, err := s.place(a)
	if err != nil {
		return nil, a.cause(err)
	}
	defer func() {
		s.removeRooms(a)
		for i, l := range a.lives {
			l.drop(a)
			chosen[i].inflight.Add(-1)
		}
	}()
	names := make(map[string]string, len(chosen))
	for i, in := range chosen {
		names[s.phases[i].cfg.Name] = in.id
	}
	r.mu.Lock()
	r.info.State, r.info.Instances, r.info.Attempts = StateRunning, names, n+1
	r.mu.Unlock()
	r.event(Event{What: "scheduled"})
	for _, l := range a.lives {
		if err := l.use(a); err != nil {
			return nil, err
		}
	}

	req := sdk.Request{ID: r.id, Prompt: r.sub.Prompt, Seed: r.sub.Seed, Steps: r.sub.Steps, ArtifactDir: s.artifactDir()}
	if err := s.openRooms(a, req, rooms); err != nil {
		return nil, a.cause(err)
	}
	r.event(Event{What: "rooms open", Detail: fmt.Sprint(rooms)})
	art, err := s.runPhases(a, req, rooms)
	return art, a.cause(err)
}

// place chooses one instance per phase for the attempt, waiting while a
// phase has no ready instance but one is coming back, and reserves the
// rooms. One decision at a time, and its load counted before the next: a
// policy that looks at the load (least loaded, p2c) would otherwise see
// the same load for requests scheduled together and send them all to one
// instance.
func (s *Supervisor) place(a *attempt) ([]*instance, []uint64, error) {
	for {
		changed := s.readyWatch()
		waiting, err := s.unservable()
		if err != nil {
			return nil, nil, err
		}
		if !waiting {
			s.schedMu.Lock()
			chosen, err := s.schedule(a.ctx, a.r.id, a.r.sub.Key)
			if err == nil {
				a.lives = make([]*life, len(chosen))
				for i, in := range chosen {
					in.inflight.Add(1)
					a.lives[i] = in.cur.Load()
				}
				rooms := s.reserveRooms(a, chosen)
				s.schedMu.Unlock()
				return chosen, rooms, nil
			}
			s.schedMu.Unlock()
			// An instance may have gone away between the check and the
			// decision: wait for it, unless nothing is coming back.
			if w, _ := s.unservable(); !w {
				return nil, nil, err
			}
		}
		select {
		case <-changed:
		case <-a.ctx.Done():
			return nil, nil, a.ctx.Err()
		}
	}
}

// reserveRooms takes one new room id per hop and records every side of
// every hop, in removal order (per hop: sender, then receiver; hops
// upstream first), counting it in its instance's open rooms at once, so
// that the next scheduling decision sees it.
func (s *Supervisor) reserveRooms(a *attempt, chosen []*instance) []uint64 {
	rooms := make([]uint64, len(chosen)-1)
	r := a.r
	r.mu.Lock()
	defer r.mu.Unlock()
	r.info.Rooms, r.info.Backends = nil, nil
	for i := range rooms {
		rooms[i] = s.nextRoom.Add(1)
		r.info.Rooms = append(r.info.Rooms, rooms[i])
		r.info.Backends = append(r.info.Backends, string(s.cfg.HopBackend(s.phases[i].cfg, s.phases[i+1].cfg)))
		a.opened = append(a.opened, roomSide{a.lives[i], rooms[i]}, roomSide{a.lives[i+1], rooms[i]})
		chosen[i].rooms.Add(1)
		chosen[i+1].rooms.Add(1)
	}
	return rooms
}

// openRooms opens one room per hop in two rounds: every sender side at
// once, then every receiver side at once with its sender's endpoint. So
// the sender side of each hop exists before its receiver connects, in two
// round trips whatever the pipeline's length. reserveRooms has recorded
// every side: a cancelled open may still complete in the plugin, and
// removeRooms must remove it either way.
func (s *Supervisor) openRooms(a *attempt, req sdk.Request, rooms []uint64) error {
	endpoints := make([]string, len(rooms))
	round := func(role sdk.Role) error {
		errs := make([]error, len(rooms))
		var wg sync.WaitGroup
		for i, room := range rooms {
			backend := s.cfg.HopBackend(s.phases[i].cfg, s.phases[i+1].cfg)
			l, spec := a.lives[i], sdk.RoomSpec{Room: room, Role: role, Request: req, Backend: backend}
			if role == sdk.RoleReceiver {
				l, spec.PeerEndpoint = a.lives[i+1], endpoints[i]
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				octx, cancel := context.WithTimeout(a.ctx, l.in.cfg.HangTimeout)
				ep, err := l.ctl.OpenRoom(octx, spec)
				if err != nil && a.ctx.Err() == nil && timedOut(octx, err) {
					l.killHung(fmt.Sprintf("opening room %d took longer than hang_timeout %s", room, l.in.cfg.HangTimeout))
					err = l.awaitExit(err)
				}
				cancel()
				if err != nil {
					errs[i] = fmt.Errorf("phase %s (%s): open room %d as %s: %w", l.in.phase, l.in.id, room, role, l.explain(err))
				} else if role == sdk.RoleSender {
					endpoints[i] = ep
				}
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	if err := round(sdk.RoleSender); err != nil {
		return err
	}
	return round(sdk.RoleReceiver)
}

// runPhases runs every phase of the attempt at once; each waits for its
// inputs. The first failure cancels the others and is the reason.
func (s *Supervisor) runPhases(a *attempt, req sdk.Request, rooms []uint64) (*sdk.Artifact, error) {
	ctx, cancel := context.WithCancel(a.ctx)
	defer cancel()
	type result struct {
		i   int
		art *sdk.Artifact
		err error
	}
	results := make(chan result, len(a.lives))
	for i, l := range a.lives {
		spec := sdk.RunSpec{Request: req}
		if i > 0 {
			spec.InRoom = rooms[i-1]
		}
		if i < len(rooms) {
			spec.OutRoom = rooms[i]
		}
		go func() {
			start := time.Now()
			art, err := l.ctl.Run(ctx, spec)
			l.runReturned(runKey{req.ID, spec.InRoom, spec.OutRoom})
			if err == nil {
				// Its part is done and its outputs are in the next
				// phase's buffers: its death no longer fails the attempt.
				l.drop(a)
				took := time.Since(start)
				l.in.observe(took)
				a.r.event(Event{What: "phase done", Phase: l.in.phase, Instance: l.in.id, Detail: took.Round(time.Microsecond).String()})
			}
			results <- result{i, art, l.explain(err)}
		}()
	}
	var art *sdk.Artifact
	var first error
	for range a.lives {
		res := <-results
		if res.err != nil {
			var ie *InstanceError
			if first == nil || errors.As(res.err, &ie) || (errors.Is(first, context.Canceled) && !errors.Is(res.err, context.Canceled)) {
				l := a.lives[res.i]
				if errors.As(res.err, &ie) {
					first = ie
				} else {
					first = fmt.Errorf("phase %s (%s): %w", l.in.phase, l.in.id, res.err)
				}
			}
			cancel()
			continue
		}
		if res.i == len(a.lives)-1 {
			art = res.art
		}
	}
	if first != nil {
		return nil, first
	}
	if art == nil {
		return nil, errors.New("the last phase returned no artifact")
	}
	return art, nil
}

// removeRooms removes the attempt's rooms upstream → downstream: for each
// hop the sender side first (the order they were opened in), so that no
// sender writes into a freed buffer. A side on a process that has exited
// went with it.
func (s *Supervisor) removeRooms(a *attempt) {
	for _, side := range a.opened {
		if !side.l.proc.exited() {
			ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
			if err := side.l.ctl.RemoveRoom(ctx, side.room); err != nil && !side.l.proc.exited() {
				s.logger.Warn("remove room", "request", a.r.id, "room", side.room, "instance", side.l.in.id, "error", err)
			}
			cancel()
		}
		side.l.in.rooms.Add(-1)
	}
	a.opened = nil
}

// removeTimeout bounds one RemoveRoom call.
const removeTimeout = 10 * time.Second

func (ph *phase) candidates() sdk.PhaseCandidates {
	pc := sdk.PhaseCandidates{Phase: ph.cfg.Name}
	for _, in := range ph.instances {
		pc.Candidates = append(pc.Candidates, sdk.Candidate{
			ID:            in.id,
			Index:         in.index,
			Ready:         in.currentState() == stateReady,
			OpenRooms:     int(in.rooms.Load()),
			Inflight:      int(in.inflight.Load()),
			LatencyEWMAms: in.latencyMs(),
			Labels:        ph.cfg.InstanceLabels(in.index),
		})
	}
	return pc
}

func (ph *phase) instance(id string) *instance {
	for _, in := range ph.instances {
		if in.id == id {
			return in
		}
	}
	return nil
}

func (s *Supervisor) artifactDir() string {
	if filepath.IsAbs(s.cfg.ArtifactDir) {
		return s.cfg.ArtifactDir
	}
	abs, err := filepath.Abs(s.cfg.ArtifactDir)
	if err != nil {
		return s.cfg.ArtifactDir
	}
	return abs
}

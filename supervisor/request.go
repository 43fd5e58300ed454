package supervisor

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/phased/phased/supervisor/config"
)

// Request states. A request ends done or failed, never silently dropped.
const (
	StateQueued  = "queued"
	StateRunning = "running"
	StateDone    = "done"
	StateFailed  = "failed"
)

// RequestStates are a request's states, in the order it goes through them.
var RequestStates = []string{StateQueued, StateRunning, StateDone, StateFailed}

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
	// Priority orders the queue: from MinPriority to MaxPriority, the
	// higher first; 0 is DefaultPriority.
	Priority int `json:"priority,omitempty"`
	// Deadline is how long after its submission the request must be
	// done: past it, it fails "deadline exceeded". 0 is the config's
	// default_deadline (none unless set).
	Deadline Duration `json:"deadline,omitempty"`
}

// The bounds of a submission.
const (
	MaxKeyLen    = 256      // bytes of its key
	MaxPromptLen = 64 << 10 // bytes of its prompt
	MaxSteps     = 10000    // its steps, from 1
)

// Validate checks a submission from a user: a prompt and at least one step.
func (s Submission) Validate() error {
	switch {
	case s.Prompt == "":
		return fmt.Errorf("%w: prompt must not be empty", ErrBadInput)
	case len(s.Prompt) > MaxPromptLen:
		return fmt.Errorf("%w: prompt is %d bytes; at most %d are accepted", ErrBadInput, len(s.Prompt), MaxPromptLen)
	case s.Steps <= 0 || s.Steps > MaxSteps:
		return fmt.Errorf("%w: steps must be between 1 and %d, got %d", ErrBadInput, MaxSteps, s.Steps)
	case len(s.Key) > MaxKeyLen:
		return fmt.Errorf("%w: key is %d bytes; at most %d are accepted", ErrBadInput, len(s.Key), MaxKeyLen)
	case s.Priority != 0 && (s.Priority < MinPriority || s.Priority > MaxPriority):
		return fmt.Errorf("%w: priority must be between %d and %d (or 0, for %d), got %d", ErrBadInput, MinPriority, MaxPriority, DefaultPriority, s.Priority)
	case s.Deadline < 0 || time.Duration(s.Deadline) > MaxDeadline:
		return fmt.Errorf("%w: deadline must be between 0 (none) and %s, got %s", ErrBadInput, MaxDeadline, time.Duration(s.Deadline))
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
	ID       string `json:"id"`
	State    string `json:"state"`
	Prompt   string `json:"prompt,omitempty"` // left out of lists
	Seed     int64  `json:"seed"`
	Steps    int    `json:"steps"`
	Key      string `json:"key,omitempty"`
	Priority int    `json:"priority,omitempty"`
	// Deadline is when the request must be done by; nil: none.
	Deadline  *time.Time        `json:"deadline,omitempty"`
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
	// QueuePosition is the request's place in the queue while it is
	// queued (1: next to be dispatched), 0 otherwise.
	QueuePosition int `json:"queue_position,omitempty"`
	// EstimatedStart is when a queued request may get its slot, if
	// every slot is held as long as requests lately held theirs and no
	// request ahead of it in priority joins; nil when unknown.
	EstimatedStart *time.Time `json:"estimated_start,omitempty"`
	// Progress is each phase's progress in the current attempt, in
	// pipeline order (left out of lists).
	Progress []PhaseProgress `json:"progress,omitempty"`
	// Timeline is where the request's time went, span by span, in the
	// order they began (left out of lists).
	Timeline []Span `json:"timeline,omitempty"`
}

// PhaseProgress is how far one phase's Run of a request is.
type PhaseProgress struct {
	Phase    string `json:"phase"`
	Instance string `json:"instance"`
	// Stage is the Run's stage as the phase reports it: "waiting" (for
	// its inputs), "computing", "sending" (its outputs), "finished".
	Stage string `json:"stage"`
	// Done of Total units of work (denoising steps for a transformer);
	// 0 of 0 until the phase reports its first step.
	Done  int `json:"done"`
	Total int `json:"total"`
	// StepsPerSecond is Done over the time since the Run began to
	// compute; 0 until two steps are reported.
	StepsPerSecond float64 `json:"steps_per_second,omitempty"`
	// ResumedFrom is the step the Run resumed at from the request's
	// checkpoint; 0 when it began at the start.
	ResumedFrom int `json:"resumed_from,omitempty"`
}

// The names of a timeline's spans.
const (
	SpanQueued   = "queued"   // accepted → a dispatch slot and a decision
	SpanSchedule = "schedule" // the policies' decision; Detail: the choice
	SpanRooms    = "rooms"    // every room opened, upstream first
	SpanWait     = "wait"     // a phase's Run waiting for its inputs
	SpanRun      = "run"      // a phase's compute: first to last step
	SpanHop      = "hop"      // a phase's outputs moving to the next phase
	SpanRemove   = "remove"   // the rooms removed, upstream first
	SpanArtifact = "artifact" // the result recorded (journal) and reported
	SpanAttempt  = "attempt"  // one dispatch attempt, when retried
)

// Span is one stretch of a request's timeline.
type Span struct {
	Name     string `json:"name"` // one of the Span… constants
	Phase    string `json:"phase,omitempty"`
	Instance string `json:"instance,omitempty"`
	// Start is when it began; End when it ended (nil while it lasts).
	Start time.Time  `json:"start"`
	End   *time.Time `json:"end,omitempty"`
	// Detail says more: the policy's choice, the rooms, an error.
	Detail string `json:"detail,omitempty"`
	// A hop's room, backend and the bytes its sender moved.
	Room    uint64 `json:"room,omitempty"`
	Backend string `json:"backend,omitempty"`
	Bytes   int64  `json:"bytes,omitempty"`
	// A run's units of work (denoising steps): in all, those it reported
	// done (counted from the start), and the step it resumed at from its
	// request's checkpoint (0: it began at the start).
	Steps       int `json:"steps,omitempty"`
	Done        int `json:"done,omitempty"`
	ResumedFrom int `json:"resumed_from,omitempty"`
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

	// Its place in the queue: the supervisor's queue, its priority and
	// deadline (zero: none), its arrival (set by the queue's join) and
	// the channel the queue closes when it has its dispatch slot.
	queue    *waitQueue
	priority int
	deadline time.Time
	seq      uint64
	joined   time.Time
	granted  chan struct{}

	mu      sync.Mutex
	info    RequestInfo
	trace   trace // what its timeline and progress are made of
	removed bool
	changed chan struct{} // closed and replaced on every change
}

// snapshot is the request as the control API shows it, with its
// timeline and progress.
func (r *request) snapshot() RequestInfo {
	pos := 0
	var start *time.Time
	if r.queue != nil {
		pos = r.queue.position(r)
		if wait, ok := r.queue.untilSlot(pos); ok && pos > 0 {
			t := time.Now().Add(wait)
			start = &t
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	info := r.copyLocked()
	info.Events = append([]Event(nil), r.info.Events...)
	info.QueuePosition, info.EstimatedStart = pos, start
	info.Progress = r.trace.progress()
	info.Timeline = r.trace.timeline(r.info.Submitted)
	return info
}

// listed is the request as a list shows it: without its prompt, events,
// timeline and progress (its own view has them), so none is built.
func (r *request) listed() RequestInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	info := r.copyLocked()
	info.Events, info.Prompt = nil, ""
	return info
}

// copyLocked is r.info with its own copies of the slices a later change
// appends to or replaces; r.mu is held.
func (r *request) copyLocked() RequestInfo {
	info := r.info
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
	r.touchLocked()
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
	limit := cmp.Or(s.cfg.MaxQueue, config.DefaultMaxQueue) // a Config not from Parse has none
	if waiting := s.queue.len() + s.joining; waiting >= limit {
		s.mu.Unlock()
		s.metrics.refused.Inc()
		return "", &QueueFullError{Waiting: waiting, Max: limit, RetryAfter: s.queue.retryAfter(waiting)}
	}
	s.joining++ // until it joins the queue, or is not accepted
	id := s.ids.next(time.Now())
	// Counted in flight from here: release waits for it (and keeps the
	// journal open) until it is accepted or refused.
	s.inflight.Add(1)
	s.mu.Unlock()
	now := time.Now()
	info := RequestInfo{ID: id, State: StateQueued, Prompt: sub.Prompt, Seed: sub.Seed, Steps: sub.Steps, Key: sub.Key,
		Priority: cmp.Or(sub.Priority, DefaultPriority), Submitted: now, Events: []Event{{Time: now, What: "accepted"}}}
	if d := cmp.Or(time.Duration(sub.Deadline), s.cfg.DefaultDeadline); d > 0 {
		deadline := now.Add(d)
		info.Deadline = &deadline
	}
	r := s.newRequest(info)
	cancel := r.cancel
	// On disk before it is acknowledged: a supervisor started after a
	// crash finds it. The write (an fsync) is made outside s.mu, so that
	// status and watchers do not wait for the disk.
	if s.journal != nil {
		if err := s.journal.put(r.info); err != nil {
			cancel()
			s.mu.Lock()
			s.joining--
			s.mu.Unlock()
			s.inflight.Done()
			return "", fmt.Errorf("request not accepted: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.joining--
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
	s.prune(retainedSize(sub))
	s.remember(r)
	s.queue.join(r)
	go func() {
		defer s.inflight.Done()
		s.process(r)
	}()
	return id, nil
}

// newRequest makes the supervisor's request of info, submitted now or
// recovered from the journal: its context ends at its deadline, if it
// has one.
func (s *Supervisor) newRequest(info RequestInfo) *request {
	info.Priority = cmp.Or(info.Priority, DefaultPriority) // journaled before priorities
	r := &request{
		sub: Submission{Prompt: info.Prompt, Seed: info.Seed, Steps: info.Steps, Key: info.Key, Priority: info.Priority},
		id:  info.ID, info: info, queue: &s.queue, priority: info.Priority,
		done: make(chan struct{}), changed: make(chan struct{}),
	}
	if info.Deadline != nil {
		r.deadline = *info.Deadline
		r.ctx, r.cancel = context.WithDeadline(s.ctx, r.deadline)
	} else {
		r.ctx, r.cancel = context.WithCancel(s.ctx)
	}
	return r
}

// What the supervisor remembers of past requests is bounded: past
// MaxRetained requests, or MaxRetainedBytes of them (their prompts most of
// all: up to 64 KiB each), the oldest ended ones are forgotten.
const (
	MaxRetained      = 10000
	MaxRetainedBytes = 64 << 20
)

// retainedSize is what a request counts against MaxRetainedBytes: its
// prompt and key, and a bound on the rest (result, events).
func retainedSize(sub Submission) int64 { return int64(len(sub.Prompt)+len(sub.Key)) + 2<<10 }

// remember adds r to the requests the supervisor knows; s.mu is held.
func (s *Supervisor) remember(r *request) {
	s.requests[r.id] = r
	s.order = append(s.order, r.id)
	s.retained += retainedSize(r.sub)
}

// prune forgets the oldest ended requests until one more of size bytes
// fits within MaxRetained and MaxRetainedBytes; s.mu is held.
func (s *Supervisor) prune(size int64) {
	n := len(s.order)
	over := func() bool { return n >= MaxRetained || s.retained+size > MaxRetainedBytes }
	if !over() {
		return
	}
	kept := s.order[:0]
	var forgotten []string
	for _, id := range s.order {
		if r := s.requests[id]; over() && r.finished() {
			delete(s.requests, id)
			s.retained -= retainedSize(r.sub)
			n--
			forgotten = append(forgotten, id)
			continue
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

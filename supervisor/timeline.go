package supervisor

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/phased/phased/sdk"
)

// A request's timeline is built, when it is asked for, from the moments
// the supervisor saw: when the request left the queue, and per dispatch
// attempt when its decision was made, its rooms opened, each phase's Run
// was called, reported its first and last step and began to send, and
// returned, and when its rooms were removed and its end journaled. The
// progress events of the phases (sdk.Progress) give the moments inside a
// Run; they come on another stream than the Run's answer, so each is
// taken for what it is (a step seen at that time), never as an order.

// trace is what a request's timeline and progress are built from;
// guarded by the request's mu.
type trace struct {
	dequeued  time.Time // got a dispatch slot; zero while queued
	attempts  []*attemptTrace
	recording time.Time // began to journal its end
	ended     time.Time // reported ended
}

// attemptTrace is one dispatch attempt.
type attemptTrace struct {
	placing, placed   time.Time
	choice            string // "encoder=encoder-0 transformer=transformer-1 …"
	opening, opened   time.Time
	rooms             []uint64
	backends          []string
	runs              []runTrace // per phase, in pipeline order
	removing, removed time.Time
	err               string // why the attempt failed, when it did
}

// backendOf is the backend of the attempt's hop i, "" for none.
func (a *attemptTrace) backendOf(i int) string {
	if i < len(a.backends) {
		return a.backends[i]
	}
	return ""
}

// runTrace is one phase's Run in an attempt.
type runTrace struct {
	phase, instance string
	called          time.Time // the Run call was made
	computing       time.Time // first "computing" event: its inputs were there
	lastStep        time.Time // the last step reported
	sending         time.Time // "sending": its outputs went to the transfer manager
	returned        time.Time // the Run call returned
	stage           string
	done, total     int
	resumed         int // the step it resumed at from the request's checkpoint, 0 if none
	sentBytes       int64
	sendTime        time.Duration // its hop, as the phase measured it (RunResult.SendTime)
}

// record runs f with the request's trace, under its lock, and wakes its
// watchers.
func (r *request) record(f func(t *trace)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.trace)
	r.touchLocked()
}

// touchLocked wakes the request's watchers; r.mu is held.
func (r *request) touchLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// current returns the trace's last attempt, nil before the first.
func (t *trace) current() *attemptTrace {
	if len(t.attempts) == 0 {
		return nil
	}
	return t.attempts[len(t.attempts)-1]
}

// progressed records a progress event of the Run of phase index i on
// instance in, for the request's current attempt. It returns the units
// of work the event adds (for the steps counter), 0 for an event of
// another attempt or one that adds nothing, and, for the first event
// that says the Run resumed from a checkpoint, the step it resumed at
// (steps up to it are not work added).
func (r *request) progressed(i int, instance string, p sdk.Progress, now time.Time) (added, resumed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.trace.current()
	if a == nil || i >= len(a.runs) || a.runs[i].instance != instance || !a.matches(i, p) {
		return 0, 0
	}
	run := &a.runs[i]
	switch p.Stage {
	case sdk.StageComputing:
		if run.computing.IsZero() {
			run.computing = now
		}
		if p.Resumed > 0 && p.Resumed < p.Done && p.Done <= p.Total && run.resumed == 0 {
			run.resumed, resumed = p.Resumed, p.Resumed
			run.done = max(run.done, p.Resumed)
		}
		if p.Done > run.done {
			added = p.Done - run.done
			run.lastStep = now
		}
		run.done, run.total = max(run.done, p.Done), p.Total
	case sdk.StageSending:
		if run.sending.IsZero() {
			run.sending = now
		}
	}
	if run.stage != sdk.StageFinished {
		run.stage = p.Stage
	}
	r.touchLocked()
	return added, resumed
}

// requestProgress records a progress event of instance in in its
// request's trace, and counts the steps it adds.
func (s *Supervisor) requestProgress(in *instance, p sdk.Progress) {
	r, err := s.lookup(p.Request)
	if err != nil {
		return // forgotten, or of a request this supervisor did not make
	}
	n, resumed := r.progressed(in.stage, in.id, p, time.Now())
	if n > 0 {
		s.metrics.steps.WithLabelValues(in.phase).Add(float64(n))
		s.phases[in.stage].load.steps.Add(int64(n))
	}
	if resumed > 0 {
		s.metrics.resumes.WithLabelValues(in.phase).Inc()
		s.metrics.stepsSaved.WithLabelValues(in.phase).Add(float64(resumed))
		r.event(Event{What: "resumed", Phase: in.phase, Instance: in.id, Detail: fmt.Sprintf("at step %d of %d, from the request's checkpoint", resumed, p.Total)})
	}
}

// matches reports whether p is of phase i's Run in this attempt: the
// rooms it names are the Run's.
func (a *attemptTrace) matches(i int, p sdk.Progress) bool {
	var in, out uint64
	if i > 0 && i-1 < len(a.rooms) {
		in = a.rooms[i-1]
	}
	if i < len(a.rooms) {
		out = a.rooms[i]
	}
	return p.InRoom == in && p.OutRoom == out
}

// ran returns how long a Run computed: from the moment its inputs were
// there (its first computing event; the call for a phase that reports
// none, or whose event has not arrived) to its outputs handed over (its
// sending event) or, for the last phase, its return. This is the time
// the phase's instance worked on the request, which "phase done" shows
// and policies' latency averages are made of, not the time since every
// phase was called at once.
func (run *runTrace) ran() time.Duration {
	from, to := run.bounds()
	return to.Sub(from)
}

// bounds is when the Run's own work began and ended, as ran says; to is
// zero while it lasts. Once the Run has returned, its outputs were handed
// over SendTime (the phase's own measure) before it returned; progress
// events, which come on another stream and may arrive late, give the
// moments the answer does not.
func (run *runTrace) bounds() (from, to time.Time) {
	from = run.called
	if !run.computing.IsZero() && (run.returned.IsZero() || !run.computing.After(run.returned)) {
		from = run.computing
	}
	switch {
	case !run.returned.IsZero() && run.sendTime > 0:
		to = run.returned.Add(-run.sendTime)
	case !run.sending.IsZero() && !run.sending.Before(from) && (run.returned.IsZero() || run.sending.Before(run.returned)):
		to = run.sending
	default:
		to = run.returned
	}
	if !to.IsZero() && to.Before(from) {
		from = run.called // its first event came after its work ended
	}
	return from, to
}

// progress is each phase's progress in the current attempt; t's request's
// mu is held.
func (t *trace) progress() []PhaseProgress {
	a := t.current()
	if a == nil {
		return nil
	}
	out := make([]PhaseProgress, 0, len(a.runs))
	for _, run := range a.runs {
		pp := PhaseProgress{Phase: run.phase, Instance: run.instance, Stage: run.stage, Done: run.done, Total: run.total, ResumedFrom: run.resumed}
		if pp.Stage == "" {
			pp.Stage = sdk.StageWaiting
		}
		if ran := run.done - run.resumed; ran >= 2 && run.lastStep.After(run.computing) {
			pp.StepsPerSecond = float64(ran) / run.lastStep.Sub(run.computing).Seconds()
		}
		out = append(out, pp)
	}
	return out
}

// timeline builds the request's spans from its trace; submitted is when
// it was accepted. t's request's mu is held.
func (t *trace) timeline(submitted time.Time) []Span {
	var spans []Span
	add := func(s Span, start, end time.Time) {
		if start.IsZero() {
			return
		}
		s.Start = start
		if !end.IsZero() {
			e := end
			s.End = &e
		}
		spans = append(spans, s)
	}
	add(Span{Name: SpanQueued}, submitted, t.dequeued)
	for n, a := range t.attempts {
		if len(t.attempts) > 1 {
			end := a.removed
			if end.IsZero() && n+1 < len(t.attempts) {
				end = t.attempts[n+1].placing
			}
			add(Span{Name: SpanAttempt, Detail: fmt.Sprintf("attempt %d of %d %s", n+1, len(t.attempts), a.err)}, a.placing, end)
		}
		add(Span{Name: SpanSchedule, Detail: a.choice}, a.placing, a.placed)
		add(Span{Name: SpanRooms, Detail: roomsDetail(a.rooms, a.backends)}, a.opening, a.opened)
		for i, run := range a.runs {
			base := Span{Phase: run.phase, Instance: run.instance}
			from, to := run.bounds()
			if w := base; i > 0 && from.After(run.called) {
				w.Name = SpanWait
				add(w, run.called, from)
			}
			rs := base
			rs.Name, rs.Steps, rs.Done, rs.ResumedFrom = SpanRun, run.total, run.done, run.resumed
			if run.resumed > 0 {
				rs.Detail = fmt.Sprintf("resumed at step %d", run.resumed)
			}
			add(rs, from, to)
			if i < len(a.rooms) && !to.Equal(run.returned) {
				h := base
				h.Name, h.Room, h.Bytes, h.Backend = SpanHop, a.rooms[i], run.sentBytes, a.backendOf(i)
				add(h, to, run.returned)
			}
		}
		add(Span{Name: SpanRemove}, a.removing, a.removed)
	}
	add(Span{Name: SpanArtifact}, t.recording, t.ended)
	slices.SortStableFunc(spans, func(a, b Span) int { return a.Start.Compare(b.Start) })
	return spans
}

func roomsDetail(rooms []uint64, backends []string) string {
	parts := make([]string, len(rooms))
	for i, room := range rooms {
		b := ""
		if i < len(backends) {
			b = " " + backends[i]
		}
		parts[i] = fmt.Sprintf("%d%s", room, b)
	}
	return strings.Join(parts, ", ")
}

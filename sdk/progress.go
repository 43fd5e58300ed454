package sdk

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/phased/phased/sdk/transfer"
)

// Progress is one event about one request's Run on one phase instance, as
// PhaseControl.Progress delivers it.
type Progress struct {
	Request string // the request id
	Stage   string // StageWaiting, StageComputing, StageSending or StageFinished
	// Done and Total count units of work in StageComputing, as the phase
	// reports them with ReportProgress: 0 of 1 until it does, and 1 of 1
	// when a phase that never reports returns without an error. They are
	// 0 in the other stages.
	Done, Total int
	// InRoom and OutRoom are the Run's rooms (0: none). A request
	// dispatched again gets new rooms, so they tell its attempts apart.
	InRoom, OutRoom uint64
}

// The stages of a Run, in the order the runtime reports them. Every Run
// the instance accepts ends with StageFinished, whether it succeeded or
// failed; StageComputing comes any number of times, StageSending only
// for a Run with an out room.
const (
	// StageWaiting: Run waits for its inputs (at once for the first phase).
	StageWaiting = "waiting"
	// StageComputing: the phase's Run is executing; Done of Total units of
	// work, as the phase reports them with ReportProgress.
	StageComputing = "computing"
	// StageSending: the outputs are with the transfer manager, on their way
	// to the next phase.
	StageSending = "sending"
	// StageFinished: this instance's Run returned, with or without an error.
	StageFinished = "finished"
)

// ErrNoProgress is wrapped by the error of PhaseControl.Progress when the
// plugin does not serve progress (it was built with an SDK older than the
// Progress RPC).
var ErrNoProgress = errors.New("the plugin reports no progress")

// ReportProgress reports, from inside Phase.Run, that done of total units
// of work (denoising steps, frames, ...) are done for the request being
// run; ctx is the one Run was given, or one derived from it. Each call
// becomes a StageComputing event on the instance's Progress streams. It
// never blocks on a slow reader, and does nothing when ctx comes from
// elsewhere (a unit test, sdk.RunLocal) or once Run has returned.
func ReportProgress(ctx context.Context, done, total int) {
	if r, ok := ctx.Value(reporterKey{}).(*runReporter); ok {
		r.report(done, total)
	}
}

// reporterKey is the context key under which Run's ctx carries its
// runReporter.
type reporterKey struct{}

// runReporter publishes the events of one Run to the instance's hub.
type runReporter struct {
	hub             *progressHub
	request         string
	inRoom, outRoom uint64

	mu        sync.Mutex
	computing bool // the phase's Run is executing: ReportProgress counts
	reported  bool // the phase called ReportProgress
}

func (r *runReporter) publish(stage string, done, total int) {
	r.hub.publish(r, Progress{Request: r.request, Stage: stage, Done: done, Total: total, InRoom: r.inRoom, OutRoom: r.outRoom})
}

// context returns ctx carrying r for ReportProgress.
func (r *runReporter) context(ctx context.Context) context.Context {
	return context.WithValue(ctx, reporterKey{}, r)
}

// startComputing publishes computing 0 of 1 and lets the phase report.
func (r *runReporter) startComputing() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.computing = true
	r.publish(StageComputing, 0, 1)
}

// stopComputing ends the phase's reports; a phase that reported nothing
// and succeeded is shown as 1 of 1 done.
func (r *runReporter) stopComputing(ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.computing = false
	if ok && !r.reported {
		r.publish(StageComputing, 1, 1)
	}
}

func (r *runReporter) report(done, total int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.computing {
		return
	}
	r.reported = true
	r.publish(StageComputing, done, total)
}

// progressBuffer is how many events a Progress stream holds for a slow
// reader before it drops the oldest.
const progressBuffer = 64

// progressHub fans the events of an instance's Runs out to its Progress
// streams. Publishing never blocks: each stream has a bounded buffer that
// drops its oldest event when full. The zero value is ready to use.
type progressHub struct {
	mu      sync.Mutex
	closed  bool
	subs    map[*progressSub]struct{}
	latest  map[*runReporter]latestEvent // Runs in progress
	seq     uint64                       // orders latest by Run start
	dropped atomic.Uint64                // events dropped, all streams together
}

type latestEvent struct {
	seq uint64
	ev  Progress
}

// progressSub is one Progress stream's buffer.
type progressSub struct {
	events  chan Progress
	ended   chan struct{} // closed when the instance is released
	dropped atomic.Uint64
}

// publish records ev as from's latest event and offers it to every stream.
func (h *progressHub) publish(from *runReporter, ev Progress) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	if ev.Stage == StageFinished {
		delete(h.latest, from)
	} else if l, ok := h.latest[from]; ok {
		h.latest[from] = latestEvent{l.seq, ev}
	} else {
		if h.latest == nil {
			h.latest = make(map[*runReporter]latestEvent)
		}
		h.seq++
		h.latest[from] = latestEvent{h.seq, ev}
	}
	for s := range h.subs {
		h.offer(s, ev)
	}
}

// offer queues ev on s, dropping s's oldest event when s is full. Only
// publishers, which hold h.mu, send on s.events, so the loop ends at the
// latest on its second turn.
func (h *progressHub) offer(s *progressSub, ev Progress) {
	for {
		select {
		case s.events <- ev:
			return
		default:
		}
		select {
		case <-s.events:
			s.dropped.Add(1)
			h.dropped.Add(1)
		default:
		}
	}
}

// subscribe opens a stream that starts with the latest event of every Run
// in progress, oldest Run first. It fails once the hub is closed.
func (h *progressHub) subscribe() (*progressSub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, transfer.ErrReleased
	}
	s := &progressSub{events: make(chan Progress, progressBuffer), ended: make(chan struct{})}
	now := make([]latestEvent, 0, len(h.latest))
	for _, l := range h.latest {
		now = append(now, l)
	}
	slices.SortFunc(now, func(a, b latestEvent) int { return cmp.Compare(a.seq, b.seq) })
	for _, l := range now {
		h.offer(s, l.ev)
	}
	if h.subs == nil {
		h.subs = make(map[*progressSub]struct{})
	}
	h.subs[s] = struct{}{}
	return s, nil
}

func (h *progressHub) unsubscribe(s *progressSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
}

// close ends every stream, after what they hold has been read, and refuses
// new ones. Idempotent.
func (h *progressHub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	for s := range h.subs {
		close(s.ended)
	}
	h.subs, h.latest = nil, nil
}

// follow calls fn with s's events until ctx ends or the hub closes; then
// it delivers what s still holds.
func (s *progressSub) follow(ctx context.Context, fn func(Progress)) {
	for {
		select {
		case ev := <-s.events:
			fn(ev)
		case <-ctx.Done():
			return
		case <-s.ended:
			for {
				select {
				case ev := <-s.events:
					fn(ev)
				default:
					return
				}
			}
		}
	}
}

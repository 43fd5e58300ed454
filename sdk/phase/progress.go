package phase

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/transfer"
)

// runReporter publishes the events of one Run to the instance's hub.
type runReporter struct {
	hub             *progressHub
	request         string
	inRoom, outRoom uint64

	mu        sync.Mutex
	computing bool // the phase's Run is executing: sdk.ReportProgress counts
	reported  bool // the phase called sdk.ReportProgress
	done      int  // the last done reported
	resumed   int  // the step the Run resumed at (sdk.Resume), 0 if none
	// offered is the step of the checkpoint sdk.Resume returned, until
	// the phase's next report says whether it resumed there (a report
	// past it) or started over.
	offered int
}

func (r *runReporter) publish(stage string, done, total int) {
	ev := sdk.Progress{Request: r.request, Stage: stage, Done: done, Total: total, InRoom: r.inRoom, OutRoom: r.outRoom}
	if stage == sdk.StageComputing {
		ev.Resumed = r.resumed
	}
	r.hub.publish(r, ev)
}

// resumeOffered records that sdk.Resume gave the Run the checkpoint of
// step: the phase's next report says whether it resumed there.
func (r *runReporter) resumeOffered(step int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.offered = step
}

// context returns ctx carrying r for sdk.ReportProgress.
func (r *runReporter) context(ctx context.Context) context.Context {
	return sdk.WithReporter(ctx, r.report)
}

// startComputing publishes computing 0 of 1 and lets the phase report.
func (r *runReporter) startComputing() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.computing = true
	r.publish(sdk.StageComputing, 0, 1)
}

// stopComputing ends the phase's reports; a phase that reported nothing
// and succeeded is shown as 1 of 1 done.
func (r *runReporter) stopComputing(ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.computing = false
	if ok && !r.reported {
		r.publish(sdk.StageComputing, 1, 1)
	}
}

func (r *runReporter) report(done, total int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.computing {
		return
	}
	r.reported = true
	if r.offered > 0 {
		// The first report after Resume: past its step, the Run
		// resumed there, and the steps up to it are not work done now.
		if done > r.offered {
			r.resumed, r.done = r.offered, max(r.done, r.offered)
		}
		r.offered = 0
	}
	if done > r.done {
		r.hub.units.Add(uint64(done - r.done))
		r.done = done
	}
	r.publish(sdk.StageComputing, done, total)
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
	units   atomic.Uint64                // units of work reported done, all Runs together
}

type latestEvent struct {
	seq uint64
	ev  sdk.Progress
}

// progressSub is one Progress stream's buffer.
type progressSub struct {
	events  chan sdk.Progress
	ended   chan struct{} // closed when the instance is released
	dropped atomic.Uint64
}

// publish records ev as from's latest event and offers it to every stream.
func (h *progressHub) publish(from *runReporter, ev sdk.Progress) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	if ev.Stage == sdk.StageFinished {
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
func (h *progressHub) offer(s *progressSub, ev sdk.Progress) {
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
	s := &progressSub{events: make(chan sdk.Progress, progressBuffer), ended: make(chan struct{})}
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
func (s *progressSub) follow(ctx context.Context, fn func(sdk.Progress)) {
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

package supervisor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phased/phased/policies/roundrobin"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// process runs one request through the pipeline and always ends it. An
// attempt that fails because an instance it used exited or hung is
// dispatched again, with new rooms, while the retry budget lasts.
func (s *Supervisor) process(r *request) {
	defer r.cancel()
	var art *sdk.Artifact
	var err error
	// Queued (since Submit: waitQueue) until the queue gives it one of
	// MaxInflight slots; the slot is held until the request's rooms are
	// removed.
	select {
	case <-r.granted:
	case <-r.ctx.Done():
	}
	if r.ctx.Err() != nil {
		// Removed, past its deadline or released before it was dispatched.
		if !s.queue.leave(r) {
			s.queue.release() // its slot came meanwhile
		}
		err = r.ctx.Err()
	} else {
		now := time.Now()
		r.record(func(t *trace) { t.dequeued = now })
		s.metrics.queueWait.Observe(now.Sub(r.info.Submitted).Seconds())
		budget := retryBudget{retries: s.cfg.Retries, poison: cmp.Or(s.cfg.PoisonCrashes, config.DefaultPoisonCrashes)}
		refusals := 0
		for n := 0; ; n++ {
			art, err = s.dispatch(r, n)
			if r.ctx.Err() == nil {
				again, end := s.refused(r, err, &refusals)
				if end != nil {
					err = end
					break
				}
				if again {
					continue
				}
			}
			var ie *InstanceError
			if err == nil || r.ctx.Err() != nil || !errors.As(err, &ie) {
				break
			}
			note, end := budget.spend(ie, n+1)
			if end != nil {
				err = end
				break
			}
			s.retried.Add(1)
			r.event(Event{What: "retry", Detail: fmt.Sprintf("attempt %d (%s): %v", n+2, note, err)})
			s.logger.Warn("dispatching the request again", "request", r.id, "attempt", n+2, "budget", note, "cause", err)
		}
		s.queue.release()
		s.queue.served(time.Since(now))
	}
	// Rooms were removed on every path, upstream first, before the
	// request is reported as ended, and its end is journaled before that
	// too: a request reported done is never run again after a restart.
	r.mu.Lock()
	end := r.info
	now := time.Now()
	end.Finished = &now
	var spent *RetryError
	switch {
	case r.removed:
		// Removed, even if it finished meanwhile: as journaled at Remove.
		end.State, end.Reason = StateFailed, ReasonRemoved
	case err != nil && s.ctx.Err() != nil:
		end.State, end.Reason = StateFailed, ReasonReleased
	case err != nil && errors.Is(r.ctx.Err(), context.DeadlineExceeded):
		end.State, end.Reason = StateFailed, deadlineReason(end, r.trace.dequeued.IsZero())
	case errors.As(err, &spent):
		end.State, end.Reason = StateFailed, spent.Reason
	case err != nil:
		end.State, end.Reason = StateFailed, err.Error()
	default:
		end.State, end.Artifact, end.SHA256 = StateDone, art.Path, art.SHA256
	}
	r.trace.recording = time.Now()
	r.mu.Unlock()
	s.ended(r, end)
	s.dropCheckpoints(r)
	r.mu.Lock()
	r.trace.ended = time.Now()
	r.info.Finished, r.info.State, r.info.Reason, r.info.Artifact, r.info.SHA256 = end.Finished, end.State, end.Reason, end.Artifact, end.SHA256
	r.mu.Unlock()
	r.event(Event{What: end.State, Detail: end.Reason})
	s.metrics.ended(end)
	close(r.done)
	s.logger.Info("request ended", nonEmpty("request", r.id, "state", end.State, "reason", end.Reason, "took", now.Sub(end.Submitted))...)
}

// deadlineReason is why a request that was not done by its deadline
// failed, and where it was then: queued, or running.
func deadlineReason(info RequestInfo, queued bool) string {
	where := "it was still queued"
	switch {
	case !queued && info.Attempts > 1:
		where = fmt.Sprintf("it was running, attempt %d", info.Attempts)
	case !queued:
		where = "it was running"
	}
	return fmt.Sprintf("%v: not done %s after its submission (%s); submit it with a later --deadline, or raise default_deadline in the config",
		ErrDeadlineExceeded, info.Deadline.Sub(info.Submitted).Round(time.Millisecond), where)
}

// attempt is one dispatch of a request: the instance processes it was
// given, its rooms, and its context, which the supervisor cancels with an
// InstanceError when one of those processes exits or hangs.
type attempt struct {
	r      *request
	ctx    context.Context
	cancel context.CancelCauseFunc
	lives  []*life // per phase
	// sides are the two sides of every hop's room, sender then receiver,
	// upstream first: hop i's are sides[2i] and sides[2i+1].
	sides []*roomSide
	// spares holds, per hop, the endpoint of the spare sender side the
	// hop took (spare.go), "" where it took none.
	spares []string
	trace  *attemptTrace
	// early counts the removals started while the attempt runs
	// (removeEarly); returned is, per phase, whether its Run returned
	// well, and refills the instances whose spares wait for the last
	// sending phase's Run (refill), both guarded by mu.
	early    sync.WaitGroup
	mu       sync.Mutex
	returned []bool
	refills  []*life
	// creditWait: it has said that it waits for credit (waitingForCredit).
	creditWait bool
}

// roomSide is one side of a hop's room on one instance process. It is
// removed once (remove), whoever asks first.
type roomSide struct {
	l    *life
	room uint64
	role sdk.Role
	once sync.Once
	gone chan struct{} // closed once removed
	// opened: the receiver's OpenRoom succeeded, so the instance holds
	// credit for it (credit.go).
	opened atomic.Bool
}

func newRoomSide(l *life, room uint64, role sdk.Role) *roomSide {
	return &roomSide{l: l, room: room, role: role, gone: make(chan struct{})}
}

// sender and receiver are hop i's sides.
func (a *attempt) sender(i int) *roomSide   { return a.sides[2*i] }
func (a *attempt) receiver(i int) *roomSide { return a.sides[2*i+1] }

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
	a := &attempt{r: r, trace: &attemptTrace{placing: time.Now()}, returned: make([]bool, len(s.phases))}
	a.ctx, a.cancel = context.WithCancelCause(r.ctx)
	defer a.cancel(nil)
	r.record(func(t *trace) { t.attempts = append(t.attempts, a.trace) })
	chosen, rooms, err := s.place(a)
	if err != nil {
		return nil, a.cause(err)
	}
	defer func() {
		s.removeRooms(a)
		for i, l := range a.lives {
			l.drop(a)
			chosen[i].inflight.Add(-1)
			s.fillSpare(l) // if its Run never came
		}
	}()
	names := make(map[string]string, len(chosen))
	choice := make([]string, len(chosen))
	runs := make([]runTrace, len(chosen))
	for i, in := range chosen {
		names[s.phases[i].cfg.Name] = in.id
		choice[i] = s.phases[i].cfg.Name + "=" + in.id
		runs[i] = runTrace{phase: s.phases[i].cfg.Name, instance: in.id}
	}
	r.mu.Lock()
	r.info.State, r.info.Instances, r.info.Attempts = StateRunning, names, n+1
	a.trace.placed, a.trace.choice, a.trace.runs = time.Now(), strings.Join(choice, " "), runs
	a.trace.rooms, a.trace.backends = slices.Clone(r.info.Rooms), slices.Clone(r.info.Backends)
	r.mu.Unlock()
	r.event(Event{What: "scheduled"})
	for _, l := range a.lives {
		if err := l.use(a); err != nil {
			return nil, err
		}
	}

	// Without a journal nothing of the request survives the supervisor:
	// its artifact need not be fsynced on the request's path.
	req := sdk.Request{ID: r.id, Prompt: r.sub.Prompt, Seed: r.sub.Seed, Steps: r.sub.Steps, ArtifactDir: s.artifactDir(), NoSync: s.journal == nil}
	art, err := s.runPhases(a, req, rooms, s.checkpoints(r))
	return art, a.fail(a.cause(err))
}

// fail records err as why the attempt failed and returns it.
func (a *attempt) fail(err error) error {
	if err != nil {
		a.r.record(func(*trace) { a.trace.err = err.Error() })
	}
	return err
}

// place chooses one instance per phase for the attempt, waiting while a
// phase has no ready instance but one is coming back, and reserves the
// rooms. One decision at a time, and its load counted before the next: a
// policy that looks at the load (least loaded, p2c) would otherwise see
// the same load for requests scheduled together and send them all to one
// instance.
func (s *Supervisor) place(a *attempt) ([]*instance, []uint64, error) {
	again := 0
	for {
		changed := s.readyWatch()
		waiting, err := s.unservable()
		if err != nil {
			return nil, nil, err
		}
		if !waiting {
			s.schedMu.Lock()
			// Rooms are reserved under schedMu: past this check credits
			// only grow until the decision is made (but for a refusal).
			if full := s.creditless(); full != "" {
				s.schedMu.Unlock()
				a.waitingForCredit(full)
				waiting = true
			}
		}
		if !waiting {
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
			if a.ctx.Err() != nil {
				return nil, nil, a.ctx.Err()
			}
			// An instance may have gone away between the check and the
			// decision, or refused a room: wait for it, unless nothing
			// is coming back. Or it is back already (a restart is quick):
			// decide again at once, a bounded number of times.
			w, gone := s.unservable()
			switch {
			case gone != nil:
				return nil, nil, err
			case !w && s.creditless() == "":
				if again++; again > maxDecideAgain {
					return nil, nil, err
				}
				continue
			}
		}
		select {
		case <-changed:
		case <-a.ctx.Done():
			return nil, nil, a.ctx.Err()
		}
	}
}

// maxDecideAgain bounds the decisions place makes again at once after
// one failed while every phase had a ready instance.
const maxDecideAgain = 100

// reserveRooms takes one room id per hop, the spare sender side's of
// the hop's sender where it has one (spare.go) or a new one, and records
// every side of every hop, in removal order (per hop: sender, then
// receiver; hops upstream first), counting it in its instance's open
// rooms at once, so that the next scheduling decision sees it. A spare
// taken is replaced once the instance's Run for the request returns.
func (s *Supervisor) reserveRooms(a *attempt, chosen []*instance) []uint64 {
	rooms := make([]uint64, len(chosen)-1)
	a.spares = make([]string, len(rooms))
	r := a.r
	r.mu.Lock()
	r.info.Rooms, r.info.Backends = nil, nil
	for i := range rooms {
		backend := s.hopBackend(chosen[i], chosen[i+1])
		if sp, ok := a.lives[i].takeSpare(backend, a.lives[i+1]); ok {
			rooms[i], a.spares[i] = sp.id, sp.endpoint
		} else {
			rooms[i] = s.nextRoom.Add(1)
		}
		r.info.Rooms = append(r.info.Rooms, rooms[i])
		r.info.Backends = append(r.info.Backends, string(backend))
		a.sides = append(a.sides, newRoomSide(a.lives[i], rooms[i], sdk.RoleSender), newRoomSide(a.lives[i+1], rooms[i], sdk.RoleReceiver))
		chosen[i].rooms.Add(1)
		chosen[i+1].rooms.Add(1)
		chosen[i+1].recv.Add(1)
	}
	r.mu.Unlock()
	return rooms
}

// hopBackend is the backend of a hop from one instance to the next
// phase's: zmq between hosts (CURVE where the cluster has its key),
// whatever the config says; else the config's choice.
func (s *Supervisor) hopBackend(from, to *instance) sdk.Backend {
	if from.hostName() != to.hostName() {
		return sdk.BackendZMQ
	}
	return s.cfg.HopBackend(from.cfg, to.cfg)
}

// spare returns the endpoint of the spare sender side hop i took, or "".
func (a *attempt) spare(i int) string {
	if i < len(a.spares) {
		return a.spares[i]
	}
	return ""
}

// openHops opens every hop's room, each hop on its own: its sender side
// (unless the hop took a spare, which is open), then its receiver side
// with the sender's endpoint, so that the sender
// side of a hop exists before its receiver connects, in two round trips
// whatever the pipeline's length, and a phase whose rooms are open need
// not wait for the others' (runPhases). senderOpen[i] and hopOpen[i] are
// closed once hop i's sender side, and then both its sides, are open; the
// first failure cancels ctx with its reason. It records the rooms span
// and, when every room is open, the "rooms open" event; its goroutines end
// by the time wg is done. reserveRooms has recorded every side: a
// cancelled open may still complete in the plugin, and removeRooms must
// remove it either way.
func (s *Supervisor) openHops(ctx context.Context, fail context.CancelCauseFunc, wg *sync.WaitGroup, a *attempt, req sdk.Request, rooms []uint64) (senderOpen, hopOpen []chan struct{}) {
	senderOpen, hopOpen = make([]chan struct{}, len(rooms)), make([]chan struct{}, len(rooms))
	a.r.record(func(*trace) { a.trace.opening = time.Now() })
	var left sync.WaitGroup
	var opened atomic.Int32
	for i := range rooms {
		senderOpen[i], hopOpen[i] = make(chan struct{}), make(chan struct{})
		wg.Add(1)
		left.Add(1)
		go func() {
			defer wg.Done()
			defer left.Done()
			ep, err := a.spare(i), error(nil)
			if ep == "" {
				ep, err = s.openSide(ctx, a, req, i, sdk.RoleSender, "")
			}
			if err == nil {
				close(senderOpen[i])
				if _, err = s.openSide(ctx, a, req, i, sdk.RoleReceiver, ep); err == nil {
					a.receiver(i).open()
				}
			}
			if err != nil {
				fail(err)
				return
			}
			opened.Add(1)
			close(hopOpen[i])
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		left.Wait()
		a.r.record(func(*trace) { a.trace.opened = time.Now() })
		if int(opened.Load()) == len(rooms) { // even if a phase has failed since
			a.r.event(Event{What: "rooms open", Detail: fmt.Sprint(rooms)})
		}
	}()
	return senderOpen, hopOpen
}

// openSide opens hop i's room on its sender (phase i) or receiver (phase
// i+1, with the sender's endpoint peer), and returns the sender's
// endpoint.
func (s *Supervisor) openSide(ctx context.Context, a *attempt, req sdk.Request, i int, role sdk.Role, peer string) (string, error) {
	room := a.sender(i).room
	l, spec := a.lives[i], sdk.RoomSpec{Room: room, Role: role, Request: req, Backend: s.hopBackend(a.lives[i].in, a.lives[i+1].in)}
	if role == sdk.RoleReceiver {
		l, spec.PeerEndpoint = a.lives[i+1], peer
	}
	octx, cancel := context.WithTimeout(ctx, l.in.cfg.HangTimeout)
	defer cancel()
	ep, err := l.ctl.OpenRoom(octx, spec)
	if err != nil && ctx.Err() == nil && timedOut(octx, err) {
		l.killHung(fmt.Sprintf("opening room %d took longer than hang_timeout %s", room, l.in.cfg.HangTimeout))
		err = l.awaitExit(err)
	}
	if err != nil {
		return "", asRefused(l.in, fmt.Errorf("phase %s (%s): open room %d as %s: %w", l.in.phase, l.in.id, room, role, l.explain(err)))
	}
	return ep, nil
}

// runPhases opens the attempt's rooms (openHops) and runs each phase as
// soon as its own rooms are open, so that the first phases compute while
// the later rooms open; each waits for its inputs. It removes each hop's
// room once the phases on both its ends have returned (removeEarly). The
// first failure cancels the others and is the reason; a failure to open a
// room comes first.
func (s *Supervisor) runPhases(a *attempt, req sdk.Request, rooms []uint64, checkpoints []sdk.CheckpointSpec) (*sdk.Artifact, error) {
	ctx, cancel := context.WithCancelCause(a.ctx)
	var opening sync.WaitGroup
	defer opening.Wait()
	defer cancel(nil)
	var openErr error
	var once sync.Once
	fail := func(err error) {
		if ctx.Err() != nil {
			return // cancelled for another reason, which is the attempt's
		}
		once.Do(func() { openErr = err })
		cancel(err)
	}
	senderOpen, hopOpen := s.openHops(ctx, fail, &opening, a, req, rooms)
	type result struct {
		i   int
		art *sdk.Artifact
		err error
	}
	results := make(chan result, len(a.lives))
	// The Run of phase i has rooms i-1 (in) and i (out), 0 for none.
	key := func(i int) runKey {
		k := runKey{request: req.ID}
		if i > 0 {
			k.inRoom = rooms[i-1]
		}
		if i < len(rooms) {
			k.outRoom = rooms[i]
		}
		return k
	}
	// ready waits until phase i's rooms are open: its input's both sides,
	// its output's sender side (its Send waits for the receiver's
	// descriptor itself).
	ready := func(i int) error {
		var chans []chan struct{}
		if i > 0 {
			chans = append(chans, hopOpen[i-1])
		}
		if i < len(rooms) {
			chans = append(chans, senderOpen[i])
		}
		for _, ch := range chans {
			select {
			case <-ch:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		return nil
	}
	for i, l := range a.lives {
		k := key(i)
		spec := sdk.RunSpec{Request: req, InRoom: k.inRoom, OutRoom: k.outRoom}
		if l.in.host == nil { // the checkpoint directory is on this host
			spec.Request.Checkpoint = checkpoints[i]
		}
		go func() {
			if err := ready(i); err != nil {
				results <- result{i, nil, err}
				return
			}
			a.r.record(func(*trace) { a.trace.runs[i].called = time.Now() })
			res, err := l.ctl.Run(ctx, spec)
			l.runReturned(k)
			s.refill(a, i)
			var run runTrace
			a.r.record(func(*trace) {
				tr := &a.trace.runs[i]
				tr.returned = time.Now()
				if err == nil {
					tr.stage, tr.sentBytes, tr.sendTime = sdk.StageFinished, res.SentBytes, res.SendTime
				}
				run = *tr
			})
			if err == nil {
				// Its part is done and its outputs are in the next
				// phase's buffers: its death no longer fails the
				// attempt, and the next phase is watched from now on.
				l.drop(a)
				if i+1 < len(a.lives) {
					a.lives[i+1].delivered(s, key(i+1))
				}
				took := run.ran()
				l.in.observe(took)
				s.metrics.phaseDone(l.in, took, res, a.trace.backendOf(i))
				detail := took.Round(time.Microsecond).String()
				if res.SentBytes > 0 {
					detail += fmt.Sprintf(", sent %s in %s", HumanBytes(res.SentBytes), res.SendTime.Round(time.Microsecond))
				}
				a.r.event(Event{What: "phase done", Phase: l.in.phase, Instance: l.in.id, Detail: detail})
				if res.OutRemoved && i < len(rooms) {
					a.sender(i).removedByPlugin()
				}
				if res.InRemoved && i > 0 {
					a.receiver(i - 1).removedByPlugin()
				}
				s.removeEarly(a, i, len(rooms), res.OutDrained)
			}
			results <- result{i, res.Artifact, l.explain(err)}
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
			cancel(first)
			continue
		}
		if res.i == len(a.lives)-1 {
			art = res.art
		}
	}
	opening.Wait() // openErr is final
	if openErr != nil {
		return nil, openErr
	}
	if first != nil {
		return nil, first
	}
	if art == nil {
		return nil, errors.New("the last phase returned no artifact")
	}
	return art, nil
}

// refill replaces, once phase i's Run has returned, the spares its
// instance holds and the sides standing by on it (fillSpare): not when
// the request took them, since at its start the opens would compete with
// its calls, and not as each Run returns either, since the hops still
// ahead would compete with them (docs/benchmarks.md, issue 14's tenth
// step). A phase before the last one that sends waits for that one's
// Run, and all refill then, while the last phase computes; the last
// phase, which sends nothing, refills at once. If the attempt ends
// first, dispatch refills every instance of it.
func (s *Supervisor) refill(a *attempt, i int) {
	lastSender := len(a.lives) - 2
	if i < lastSender {
		a.mu.Lock()
		a.refills = append(a.refills, a.lives[i])
		a.mu.Unlock()
		return
	}
	if i == lastSender {
		a.mu.Lock()
		waiting := a.refills
		a.refills = nil
		a.mu.Unlock()
		for _, l := range waiting {
			s.fillSpare(l)
		}
	}
	s.fillSpare(a.lives[i])
}

// removeEarly records that phase i's Run returned well and removes each
// hop whose two phases have both returned: its sender side, then its
// receiver side (invariant 1). Not sooner in general: a sender's Send may
// return with its last frames still queued (the zmq backend, a peer
// without the fast path), and closing its sockets would drop them; once
// the receiving phase has returned it has everything. A sender side that
// its phase reports drained (its Send ended in the receiver's shared
// memory, no frame queued) goes at once, while its receiver still works.
// So a hop goes while the phases after it still work, and when the last
// phase answers only the last hop's receiver side (or, if its sender was
// not drained, both sides) is left for removeRooms.
func (s *Supervisor) removeEarly(a *attempt, i, hops int, drained bool) {
	a.mu.Lock()
	a.returned[i] = true
	var done []int
	if i > 0 && a.returned[i-1] {
		done = append(done, i-1)
	}
	if i < hops && a.returned[i+1] {
		done = append(done, i)
	}
	a.mu.Unlock()
	if drained && i < hops && !slices.Contains(done, i) {
		a.early.Add(1)
		go func() {
			defer a.early.Done()
			s.removeOnce(a, a.sender(i))
		}()
	}
	for _, h := range done {
		a.early.Add(1)
		go func() {
			defer a.early.Done()
			s.removeOnce(a, a.sender(h))
			s.removeOnce(a, a.receiver(h))
		}()
	}
}

// removeRooms removes what is left of the attempt's rooms in two rounds:
// every sender side at once, then every receiver side at once. So within
// each hop the sender lets go of the room before its receiver frees the
// buffers (invariant 1), while hops, which share nothing, do not wait for
// each other: two round trips whatever the pipeline's length. Sides
// removed already (removeEarly) are not asked again; one being removed is
// waited for. A side on a process that has exited went with it.
func (s *Supervisor) removeRooms(a *attempt) {
	if len(a.sides) == 0 {
		return
	}
	a.r.record(func(*trace) { a.trace.removing = time.Now() })
	defer a.r.record(func(*trace) { a.trace.removed = time.Now() })
	for _, role := range []sdk.Role{sdk.RoleSender, sdk.RoleReceiver} {
		var wg sync.WaitGroup
		for _, side := range a.sides {
			if side.role != role {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.removeOnce(a, side)
			}()
		}
		wg.Wait()
	}
	a.early.Wait()
	a.sides = nil
}

// end runs remove, if any, the first time the side ends (later calls do
// nothing), then uncounts the side and marks it gone.
func (side *roomSide) end(remove func()) {
	side.once.Do(func() {
		if remove != nil {
			remove()
		}
		side.l.in.rooms.Add(-1)
		if side.role == sdk.RoleReceiver {
			side.l.in.creditBack(side.opened.Load())
		}
		close(side.gone)
	})
}

// removeOnce removes a side unless it was removed, and returns once it
// is.
func (s *Supervisor) removeOnce(a *attempt, side *roomSide) {
	side.end(func() { s.removeSide(a, side) })
	<-side.gone
}

// removedByPlugin records that the side's instance removed it itself at
// the end of its Run (sdk.RunResult's OutRemoved, InRemoved): it is
// uncounted and not asked again.
func (side *roomSide) removedByPlugin() { side.end(nil) }

// removeSide removes one side of a room with RemoveRoom, unless its
// process has exited (the side went with it).
func (s *Supervisor) removeSide(a *attempt, side *roomSide) {
	if side.l.proc.exited() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
	defer cancel()
	if err := side.l.ctl.RemoveRoom(ctx, side.room); err != nil && !side.l.proc.exited() {
		s.logger.Warn("remove room", "request", a.r.id, "room", side.room, "instance", side.l.in.id, "error", err)
	}
}

// removeTimeout bounds one RemoveRoom call.
const removeTimeout = 10 * time.Second

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

// fallbackPick schedules one phase with the built-in round robin.
func (s *Supervisor) fallbackPick(ctx context.Context, ph *phase) (*instance, error) {
	d, err := s.fallback.Schedule(ctx, sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{ph.candidates()}})
	if err != nil {
		return nil, fmt.Errorf("phase %s: %w", ph.cfg.Name, err)
	}
	return ph.chosen(roundrobin.Name, d.Choices[ph.cfg.Name])
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
		s.background(func() {
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
		})
	}
}

// readyChanged wakes whoever waits for an instance to become ready.
func (s *Supervisor) readyChanged() {
	s.readyMu.Lock()
	close(s.readyCh)
	s.readyCh = make(chan struct{})
	s.readyMu.Unlock()
}

// readyWatch returns a channel closed at the next change of readiness.
func (s *Supervisor) readyWatch() <-chan struct{} {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	return s.readyCh
}

// unservable returns an error when a phase has no ready instance and none
// that may become ready (all failed or released), and whether some phase is
// waiting for an instance to come back.
func (s *Supervisor) unservable() (waiting bool, err error) {
	for _, ph := range s.phases {
		ready, recovering := false, false
		var last string
		for _, in := range ph.all() {
			switch in.currentState() {
			case stateReady:
				ready = true
			case stateStarting, stateExited, stateRestarting:
				recovering = true
			}
			in.mu.Lock()
			if in.lastExit != "" {
				last = in.lastExit
			}
			in.mu.Unlock()
		}
		switch {
		case ready:
		case recovering || s.hostsMayServe(ph): // a host may join with one
			waiting = true
		default:
			return false, fmt.Errorf("phase %s has no instance left: all %d failed (last: %s); see `supervisor status`, fix the cause and start the supervisor again, or give the phase a larger restart { max }", ph.cfg.Name, len(ph.all()), last)
		}
	}
	return waiting, nil
}

package supervisor

import (
	"context"
	"time"

	"github.com/phased/phased/sdk"
)

// Spare rooms.
//
// A request's rooms open in two rounds: each hop's sender side, then its
// receiver side, which connects to the endpoint the sender answered
// (invariant 3), allocates its buffers and sends its descriptor. Neither
// the sender side nor the connection needs the request, so the
// supervisor makes them ahead of time, per pair of instances that may
// share a hop: for every instance that sends and every instance of the
// next phase, a spare room whose sender side is open and, when the
// receiving plugin can stand by (sdk.FeatureStandbyReceiver), whose
// receiver side is open too, connected, with no buffers yet. It opens
// them once the pipeline has started, after a restart, and again once
// the request that took one has handed over its last hop (the Run of its
// last sending phase has returned: the instances are idle, and earlier
// the opens would compete with the request's calls and hops; refill);
// the side standing by at once if the receiving instance has no request
// in flight, else once its Run has returned (opened while it computes,
// it would slow that computation down).
//
// A request whose hop finds the spare of its two instances takes its room
// id: its receiver open arms the side standing by — it allocates the
// buffers and sends the descriptor over the connection already made, so
// no connection handshake is on the request's path — or, where nothing
// stands by, opens the receiver side as before. One that finds none opens
// both sides. For the plugins a spare is a room like any other (removed in
// order once used, removed at release, sender side first); the supervisor
// counts it in no load (the policies' open rooms, status, metrics) until a
// request takes it. A side standing by on a process that exited went
// with it; one whose sender's process exited is removed then.

// spareRoom is a room no request has taken yet, opened for a hop from
// the instance that holds it to the instance it is kept for.
type spareRoom struct {
	id       uint64
	endpoint string // the sender side's; "" while it opens
	backend  sdk.Backend
	// standby is the process of the receiving instance whose receiver
	// side stands by in the room, nil where none does; opening while it
	// is being opened. Both guarded by the holder's mu.
	standby *life
	opening bool
}

// spareRetry is how long the supervisor waits, after an open of a spare
// failed on an instance, before it opens one there again.
const spareRetry = time.Second

// fillSpare opens, in the background, the spare rooms l is missing, one
// per instance of the next phase, unless the pipeline is still starting,
// l's phase is the last, l has exited, or an open failed there less than
// spareRetry ago; and the sides standing by on l that the previous
// phase's spares are missing (standByFor). l is idle, or starting.
func (s *Supervisor) fillSpare(l *life) {
	if l == nil || !s.pipeline.Load() {
		return
	}
	s.standByFor(l)
	if l.in.stage+1 >= len(s.phases) {
		return
	}
	for _, to := range s.phases[l.in.stage+1].all() {
		if to.retiring() {
			continue
		}
		backend := s.hopBackend(l.in, to)
		l.mu.Lock()
		if l.dead != nil || l.spares[to] != nil || time.Since(l.spareFailed) < spareRetry {
			l.mu.Unlock()
			continue
		}
		sp := &spareRoom{id: s.nextRoom.Add(1), backend: backend}
		if l.spares == nil {
			l.spares = map[*instance]*spareRoom{}
		}
		l.spares[to] = sp
		l.mu.Unlock()
		if !s.background(func() { s.openSpare(l, to, sp) }) { // release has begun
			l.mu.Lock()
			delete(l.spares, to)
			l.mu.Unlock()
			return
		}
	}
}

// openSpare opens spare sp on l, kept for a hop to instance to: its
// sender side, then, unless to has a request in flight, its receiver side
// standing by (standBy). A side standing by is opened while its process
// is idle: opened as it computes, it would slow that request down.
func (s *Supervisor) openSpare(l *life, to *instance, sp *spareRoom) {
	ctx, cancel := context.WithTimeout(s.bgCtx, l.in.cfg.HangTimeout)
	ep, err := l.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: sp.id, Role: sdk.RoleSender, Backend: sp.backend})
	cancel()
	l.mu.Lock()
	if err == nil && l.dead == nil && s.bgCtx.Err() == nil {
		sp.endpoint = ep
		l.mu.Unlock()
		if to.retiring() {
			// A scale-in retires to: removed here, or by its
			// dropSparesFor if that came after the endpoint was set.
			l.mu.Lock()
			mine := l.spares[to] == sp
			if mine {
				delete(l.spares, to)
			}
			l.mu.Unlock()
			if mine {
				s.removeSpare(l, sp.id)
			}
			return
		}
		if to.inflight.Load() == 0 {
			s.standBy(l, to, sp)
		}
		return
	}
	delete(l.spares, to)
	if err != nil {
		l.spareFailed = time.Now()
	}
	l.mu.Unlock()
	if err != nil {
		s.logger.Debug("open a spare sender side", "instance", l.in.id, "room", sp.id, "error", err)
	}
	// Not kept: an open that timed out may still complete in the plugin,
	// one made as release began is not used, and one whose process
	// exited meanwhile is of no use.
	s.removeSpare(l, sp.id)
}

// standBy opens the receiver side of l's spare sp on the process of
// instance to, standing by, if that process can and nothing else has
// (the spare is open, not taken, and no side stands by or is being
// opened). While it opens, no request takes the spare.
func (s *Supervisor) standBy(l *life, to *instance, sp *spareRoom) {
	r := to.cur.Load()
	if r == nil || !r.proc.info.Has(sdk.FeatureStandbyReceiver) || !r.alive() {
		return
	}
	l.mu.Lock()
	if l.spares[to] != sp || sp.endpoint == "" || sp.standby != nil || sp.opening || l.dead != nil {
		l.mu.Unlock()
		return
	}
	sp.opening = true
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(s.bgCtx, to.cfg.HangTimeout)
	_, err := r.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: sp.id, Role: sdk.RoleReceiver, Backend: sp.backend, PeerEndpoint: sp.endpoint, Standby: true})
	cancel()
	l.mu.Lock()
	sp.opening = false
	mine := l.spares[to] == sp
	if mine && err == nil && l.dead == nil && s.bgCtx.Err() == nil {
		sp.standby = r
		l.mu.Unlock()
		return
	}
	if mine {
		delete(l.spares, to)
	}
	if err != nil {
		l.spareFailed = time.Now()
	}
	l.mu.Unlock()
	if err != nil {
		s.logger.Debug("open a receiver side standing by", "instance", to.id, "room", sp.id, "error", err)
	}
	// Not kept, and of no use for a request to r any more: r has seen
	// the room id (a failed open keeps it used). Both sides go, the
	// sender's first (gone already where l's process exited).
	if mine {
		s.removeSpare(l, sp.id)
	}
	s.removeSpare(r, sp.id)
}

// standByFor opens, in the background, the sides standing by on r (whose
// Run has returned: it is idle) that the previous phase's spares kept for
// r's instance are missing.
func (s *Supervisor) standByFor(r *life) {
	if r == nil || !s.pipeline.Load() {
		return
	}
	s.keptFor(r.in, func(l *life, sp *spareRoom) {
		s.background(func() { s.standBy(l, r.in, sp) })
	})
}

// keptFor calls fn, with up.mu not held, for each spare that an instance
// of the previous phase keeps for in, and up, its holder.
func (s *Supervisor) keptFor(in *instance, fn func(up *life, sp *spareRoom)) {
	if in.stage == 0 {
		return
	}
	for _, from := range s.phases[in.stage-1].all() {
		up := from.cur.Load()
		if up == nil {
			continue
		}
		up.mu.Lock()
		sp := up.spares[in]
		up.mu.Unlock()
		if sp != nil {
			fn(up, sp)
		}
	}
}

// takeSpare takes l's spare room for a hop of backend to the process
// next, if one is ready. Its standby is next where next's receiver side
// stands by in it (the request's receiver open then arms it), nil where
// none does (exitedSpares forgets a side that went with its process).
func (l *life) takeSpare(backend sdk.Backend, next *life) (spareRoom, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.spares[next.in]
	if p == nil || p.endpoint == "" || p.opening || p.backend != backend || l.dead != nil {
		return spareRoom{}, false
	}
	delete(l.spares, next.in)
	return *p, true
}

// alive reports whether l's process has not been seen to exit.
func (l *life) alive() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dead == nil && !l.proc.exited()
}

// spareIDs returns the rooms of l's spares, those open and those opening,
// and of the spares kept for l by the previous phase's instances, whose
// receiver side may stand by on l.
func (s *Supervisor) spareIDs(l *life) map[uint64]bool {
	ids := map[uint64]bool{}
	l.mu.Lock()
	for _, sp := range l.spares {
		ids[sp.id] = true
	}
	l.mu.Unlock()
	s.keptFor(l.in, func(_ *life, sp *spareRoom) { ids[sp.id] = true })
	return ids
}

// unspared returns how many of rooms, an instance's open rooms as it
// reports them, are not spares (spareIDs).
func (s *Supervisor) unspared(l *life, rooms []sdk.RoomInfo) int {
	ids := s.spareIDs(l)
	n := 0
	for _, r := range rooms {
		if !ids[r.Room] {
			n++
		}
	}
	return n
}

// removeSpares removes the spare rooms of every instance at release,
// before the instances are released, each sender side before the side
// standing by; the background work that opens them has stopped.
func (s *Supervisor) removeSpares() {
	for _, ph := range s.phases {
		for _, in := range ph.all() {
			if l := in.cur.Load(); l != nil {
				s.dropSpares(l)
			}
		}
	}
}

// exitedSpares forgets what l, whose process exited, held for spares:
// its own spares (the sides standing by for them are removed), and the
// sides it stood by with for the previous phase's spares, which went
// with it (those spares serve as sender sides alone until taken, or
// until the instance's next process stands by in them).
func (s *Supervisor) exitedSpares(l *life) {
	s.dropSpares(l)
	s.keptFor(l.in, func(up *life, sp *spareRoom) {
		up.mu.Lock()
		if sp.standby == l {
			sp.standby = nil
		}
		up.mu.Unlock()
	})
}

// dropSpares forgets l's spares and removes them: the sender sides on l,
// unless its process has exited, then the sides standing by for them.
func (s *Supervisor) dropSpares(l *life) {
	l.mu.Lock()
	spares := l.spares
	l.spares = nil
	l.mu.Unlock()
	for _, sp := range spares {
		if sp.endpoint == "" {
			continue // opening: its opener removes what it opened
		}
		s.removeSpare(l, sp.id)
		if sp.standby != nil {
			s.removeSpare(sp.standby, sp.id)
		}
	}
}

// removeSpare removes spare room id from l, unless l's process has
// exited.
func (s *Supervisor) removeSpare(l *life, id uint64) {
	if l.proc.exited() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
	defer cancel()
	if err := l.ctl.RemoveRoom(ctx, id); err != nil && !l.proc.exited() {
		s.logger.Warn("remove a spare room", "instance", l.in.id, "room", id, "error", err)
	}
}

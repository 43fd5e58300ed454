package supervisor

import (
	"context"
	"time"

	"github.com/phased/phased/sdk"
)

// Spare sender sides.
//
// A request's rooms open in two rounds: each hop's sender side, then its
// receiver side, which connects to the endpoint the sender answered
// (invariant 3). The sender side needs nothing of the request, so the
// supervisor opens one on every instance that sends ahead of time, a
// spare: once the pipeline has started, after a restart, and again once
// the Run of the request that took it has returned (then the instance is
// idle; at the request's start the open would compete with its calls). A request given an instance with a spare of
// the hop's backend takes its room id and endpoint and opens only the
// receiver side, one round trip less before its phases run; one that
// finds none opens both sides as before. For the plugin a spare is a
// room like any other (removed in order once used, removed at release);
// the supervisor counts it in no load (the policies' open rooms, status,
// metrics) until a request takes it.

// spareRoom is an open sender side no request has taken yet.
type spareRoom struct {
	id       uint64
	endpoint string
	backend  sdk.Backend
}

// spareRetry is how long the supervisor waits, after an open of a spare
// failed on an instance, before it opens one there again.
const spareRetry = time.Second

// fillSpare opens a spare sender side on l in the background, unless the
// pipeline is still starting, l's phase is the last, l has one or is
// opening one, l has exited, or an open failed there less than
// spareRetry ago.
func (s *Supervisor) fillSpare(l *life) {
	if l == nil || !s.pipeline.Load() || l.in.stage+1 >= len(s.phases) {
		return
	}
	backend := s.hopBackend(l.in.stage)
	l.mu.Lock()
	if l.dead != nil || l.spareID != 0 || time.Since(l.spareFailed) < spareRetry {
		l.mu.Unlock()
		return
	}
	id := s.nextRoom.Add(1)
	l.spareID = id
	l.mu.Unlock()
	started := s.background(func() {
		ctx, cancel := context.WithTimeout(s.bgCtx, l.in.cfg.HangTimeout)
		ep, err := l.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: id, Role: sdk.RoleSender, Backend: backend})
		cancel()
		l.mu.Lock()
		if err == nil && l.dead == nil && s.bgCtx.Err() == nil {
			l.spare = &spareRoom{id: id, endpoint: ep, backend: backend}
			l.mu.Unlock()
			return
		}
		l.spareID = 0
		if err != nil {
			l.spareFailed = time.Now()
		}
		l.mu.Unlock()
		if err != nil {
			s.logger.Debug("open a spare sender side", "instance", l.in.id, "room", id, "error", err)
		}
		// Not kept: an open that timed out may still complete in the
		// plugin, and one made as release began is not used.
		s.removeSpare(l, id)
	})
	if !started { // release has begun
		l.mu.Lock()
		l.spareID = 0
		l.mu.Unlock()
	}
}

// takeSpare takes l's spare sender side for a hop of backend, if one is
// ready.
func (l *life) takeSpare(backend sdk.Backend) (spareRoom, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sp := l.spare
	if sp == nil || sp.backend != backend || l.dead != nil {
		return spareRoom{}, false
	}
	l.spare, l.spareID = nil, 0
	return *sp, true
}

// unspared returns how many of rooms, an instance's open rooms as it
// reports them, are not l's spare (open or being opened).
func (l *life) unspared(rooms []sdk.RoomInfo) int {
	l.mu.Lock()
	id := l.spareID
	l.mu.Unlock()
	n := 0
	for _, r := range rooms {
		if r.Room != id {
			n++
		}
	}
	return n
}

// removeSpares removes the spare sender side of every instance at
// release, before the instances are released; the background work that
// opens them has stopped.
func (s *Supervisor) removeSpares() {
	for _, ph := range s.phases {
		for _, in := range ph.instances {
			l := in.cur.Load()
			if l == nil {
				continue
			}
			l.mu.Lock()
			sp := l.spare
			l.spare, l.spareID = nil, 0
			l.mu.Unlock()
			if sp != nil {
				s.removeSpare(l, sp.id)
			}
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
		s.logger.Warn("remove a spare sender side", "instance", l.in.id, "room", id, "error", err)
	}
}

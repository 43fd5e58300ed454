package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// openControl records the OpenRoom and RemoveRoom calls it gets; with
// failStandby, it fails the opens of sides standing by.
type openControl struct {
	sdk.PhaseControl
	name        string
	log         *callLog
	failStandby bool
}

func (c openControl) OpenRoom(_ context.Context, spec sdk.RoomSpec) (string, error) {
	what := fmt.Sprintf("open %s %d %s", c.name, spec.Room, spec.Role)
	if spec.Standby {
		what += " standby " + spec.PeerEndpoint
	}
	c.log.add(what)
	if spec.Standby && c.failStandby {
		return "", errors.New("no")
	}
	return fmt.Sprintf("ipc:///run/%s-%d.sock", c.name, spec.Room), nil
}

func (c openControl) RemoveRoom(_ context.Context, room uint64) error {
	c.log.add(fmt.Sprintf("remove %s %d", c.name, room))
	return nil
}

// spareRig is a supervisor with one instance per phase, named names,
// whose plugins record their calls in log; the plugins of names in
// standby list the standby feature. done closes a process's exit
// notification.
type spareRig struct {
	s     *Supervisor
	lives []*life
	done  []chan struct{}
	log   *callLog
}

func newSpareRig(t *testing.T, standby []string, names ...string) *spareRig {
	t.Helper()
	g := &spareRig{s: &Supervisor{logger: hclog.NewNullLogger(), cfg: config.Default()}, log: &callLog{}}
	g.s.bgCtx, g.s.bgCancel = context.WithCancel(context.Background())
	t.Cleanup(g.s.bgCancel)
	g.s.pipeline.Store(true)
	for stage, name := range names {
		in := &instance{id: name, phase: name, stage: stage, cfg: config.Phase{Name: name, HangTimeout: time.Minute}}
		done := make(chan struct{})
		proc := &process{done: done}
		if slices.Contains(standby, name) {
			proc.info.Features = []string{sdk.FeatureStandbyReceiver}
		}
		l := &life{in: in, proc: proc, ctl: openControl{name: name, log: g.log}, users: map[*attempt]struct{}{}}
		in.cur.Store(l)
		ph := &phase{cfg: in.cfg}
		ph.setMembers([]*instance{in})
		g.s.phases = append(g.s.phases, ph)
		g.lives, g.done = append(g.lives, l), append(g.done, done)
	}
	return g
}

// calls returns the calls the plugins got, in order.
func (g *spareRig) calls() []string {
	g.log.mu.Lock()
	defer g.log.mu.Unlock()
	return slices.Clone(g.log.events)
}

// TestSpareRooms: the supervisor opens a spare room per pair of
// instances that share a hop — its sender side, then its receiver side
// standing by where the receiving plugin can (the transformer here, not
// the decoder); a request given those instances takes its room id and
// endpoint and opens only the receiver side of that hop (which arms the
// side standing by); new spares are opened once the instances' Runs
// return (not while the request starts); no spare counts among an
// instance's open rooms; at release they are removed, each sender side
// before the side standing by for it.
func TestSpareRooms(t *testing.T) {
	g := newSpareRig(t, []string{"enc", "tr"}, "enc", "tr", "dec")
	s, lives, calls := g.s, g.lives, g.calls
	var chosen []*instance
	for _, l := range lives {
		chosen = append(chosen, l.in)
	}

	for _, l := range lives {
		s.fillSpare(l) // the last phase sends nothing: no spare
	}
	s.bg.Wait()
	if got, want := calls(), []string{"open enc 1 sender", "open tr 1 receiver standby ipc:///run/enc-1.sock", "open tr 2 sender"}; !sameSet(got, want) ||
		slices.Index(got, want[0]) > slices.Index(got, want[1]) {
		t.Fatalf("after start: %v, want %v, the sender side before the side standing by", got, want)
	}
	if n := s.unspared(lives[0], []sdk.RoomInfo{{Room: 1}}); n != 0 {
		t.Errorf("the encoder's spare counts as %d open rooms, want 0", n)
	}
	if n := s.unspared(lives[1], []sdk.RoomInfo{{Room: 1}, {Room: 2}}); n != 0 {
		t.Errorf("the transformer's spare and the side standing by count as %d open rooms, want 0", n)
	}

	a := &attempt{r: &request{changed: make(chan struct{})}, trace: &attemptTrace{}, lives: lives, returned: make([]bool, len(lives))}
	rooms := s.reserveRooms(a, chosen)
	s.bg.Wait()
	if !slices.Equal(rooms, []uint64{1, 2}) {
		t.Fatalf("rooms %v, want the spares' [1 2]", rooms)
	}
	if got := calls()[3:]; len(got) != 0 {
		t.Fatalf("opened %v as the request took the spares; want nothing before the instances' Runs return", got)
	}
	s.refill(a, 0) // the encoder's Run returned: it waits for the transformer's
	s.bg.Wait()
	if got := calls()[3:]; len(got) != 0 {
		t.Fatalf("opened %v once the encoder's Run returned; want nothing before the last sending phase's Run returns", got)
	}
	s.refill(a, 1)
	s.refill(a, 2)
	s.bg.Wait()
	if got, want := calls()[3:], []string{"open enc 3 sender", "open tr 3 receiver standby ipc:///run/enc-3.sock", "open tr 4 sender"}; !sameSet(got, want) {
		t.Fatalf("spares opened in place of those taken: %v, want %v", got, want)
	}

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var wg sync.WaitGroup
	_, hopOpen := s.openHops(ctx, cancel, &wg, a, sdk.Request{ID: "r1"}, rooms)
	wg.Wait()
	for i, ch := range hopOpen {
		select {
		case <-ch:
		default:
			t.Fatalf("hop %d not open: %v", i, context.Cause(ctx))
		}
	}
	if got, want := calls()[6:], []string{"open tr 1 receiver", "open dec 2 receiver"}; !sameSet(got, want) {
		t.Fatalf("the request opened %v, want only the receiver sides %v", got, want)
	}
	if n := s.unspared(lives[1], []sdk.RoomInfo{{Room: 1}, {Room: 3}, {Room: 4}}); n != 1 {
		t.Errorf("the transformer counts %d open rooms besides its spares, want 1 (the request's)", n)
	}

	s.removeRooms(a)
	s.bgCancel()
	s.removeSpares()
	got := calls()[8:]
	if len(got) != 7 || !sameSet(got[:2], []string{"remove enc 1", "remove tr 2"}) ||
		!sameSet(got[2:4], []string{"remove tr 1", "remove dec 2"}) || !slices.Equal(got[4:], []string{"remove enc 3", "remove tr 3", "remove tr 4"}) {
		t.Fatalf("removed %v; want the request's senders, then its receivers, then at release the spares, sender side first", got)
	}
}

// TestSpareAfterExit: a spare whose side stood by on a process that has
// exited serves as a sender side alone, and the instance's next process
// stands by in it once started; the spares of a sender that exited are
// forgotten, and the sides standing by for them removed.
func TestSpareAfterExit(t *testing.T) {
	g := newSpareRig(t, []string{"enc", "tr"}, "enc", "tr")
	s, lives := g.s, g.lives
	enc, tr := lives[0], lives[1]
	s.fillSpare(enc)
	s.bg.Wait()

	// The transformer exits: its side standing by went with its process.
	close(g.done[1])
	s.exitedSpares(tr)
	enc.mu.Lock()
	if sp := enc.spares[tr.in]; sp == nil || sp.standby != nil {
		t.Errorf("the encoder's spare for the transformer after its exit: %+v, want one with nothing standing by", sp)
	}
	enc.mu.Unlock()
	// It restarts: the new process stands by in the same spare.
	tr2 := &life{in: tr.in, proc: &process{done: make(chan struct{}), info: tr.proc.info}, ctl: tr.ctl, users: map[*attempt]struct{}{}}
	tr.in.cur.Store(tr2)
	s.standByFor(tr2)
	s.bg.Wait()
	sp, ok := enc.takeSpare(sdk.BackendShm, tr2)
	if !ok || sp.id != 1 || sp.standby != tr2 {
		t.Fatalf("take the spare for the restarted transformer: %+v, ok %v; want room 1, the new process standing by", sp, ok)
	}
	if _, ok := enc.takeSpare(sdk.BackendShm, tr2); ok {
		t.Fatal("took one spare twice")
	}

	s.fillSpare(enc)
	s.bg.Wait()
	if _, ok := enc.takeSpare(sdk.BackendZMQ, tr2); ok {
		t.Fatal("took a shm spare for a zmq hop")
	}
	// The encoder exits: its spare's side standing by on the transformer
	// is removed, its own side went with it.
	close(g.done[0])
	enc.mu.Lock()
	enc.dead = &InstanceError{Instance: "enc"} // as watch sets it
	enc.mu.Unlock()
	s.dropSpares(enc)
	if _, ok := enc.takeSpare(sdk.BackendShm, tr2); ok {
		t.Fatal("took the spare of an exited sender")
	}
	got := g.calls()
	want := []string{"open enc 1 sender", "open tr 1 receiver standby ipc:///run/enc-1.sock", "open tr 1 receiver standby ipc:///run/enc-1.sock",
		"open enc 2 sender", "open tr 2 receiver standby ipc:///run/enc-2.sock", "remove tr 2"}
	if !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestStandbyWaitsForIdle: the side standing by is not opened on an
// instance with a request in flight, but once its Run has returned
// (standByFor); a spare takes it then.
func TestStandbyWaitsForIdle(t *testing.T) {
	g := newSpareRig(t, []string{"enc", "tr"}, "enc", "tr")
	s, lives, calls := g.s, g.lives, g.calls
	enc, tr := lives[0], lives[1]
	tr.in.inflight.Add(1)
	s.fillSpare(enc)
	s.bg.Wait()
	if got, want := calls(), []string{"open enc 1 sender"}; !slices.Equal(got, want) {
		t.Fatalf("with a request in flight on the transformer: %v, want %v", got, want)
	}
	s.standByFor(tr) // its Run returned
	s.bg.Wait()
	if got, want := calls(), []string{"open enc 1 sender", "open tr 1 receiver standby ipc:///run/enc-1.sock"}; !slices.Equal(got, want) {
		t.Fatalf("once its Run returned: %v, want %v", got, want)
	}
	s.standByFor(tr) // again: nothing more
	s.bg.Wait()
	if sp, ok := enc.takeSpare(sdk.BackendShm, tr); !ok || sp.id != 1 || sp.standby != tr {
		t.Fatalf("take the spare: %+v, %v; want room 1 with the transformer standing by", sp, ok)
	}
	if got := calls(); len(got) != 2 {
		t.Fatalf("calls %v, want no more", got)
	}
}

// TestStandbyOpenFails: a spare whose side standing by failed to open
// is of no use for the receiving instance (a failed open keeps the room
// id used there): both its sides are removed, the sender's first, and no
// request takes it.
func TestStandbyOpenFails(t *testing.T) {
	g := newSpareRig(t, []string{"enc", "tr"}, "enc", "tr")
	enc, tr := g.lives[0], g.lives[1]
	tr.ctl = openControl{name: "tr", log: g.log, failStandby: true}
	g.s.fillSpare(enc)
	g.s.bg.Wait()
	want := []string{"open enc 1 sender", "open tr 1 receiver standby ipc:///run/enc-1.sock", "remove enc 1", "remove tr 1"}
	if got := g.calls(); !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	if sp, ok := enc.takeSpare(sdk.BackendShm, tr); ok {
		t.Fatalf("took %+v, whose side standing by failed", sp)
	}
}

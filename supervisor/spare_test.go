package supervisor

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// openControl records the OpenRoom and RemoveRoom calls it gets.
type openControl struct {
	sdk.PhaseControl
	name string
	log  *callLog
}

func (c openControl) OpenRoom(_ context.Context, spec sdk.RoomSpec) (string, error) {
	c.log.add(fmt.Sprintf("open %s %d %s", c.name, spec.Room, spec.Role))
	return fmt.Sprintf("ipc:///run/%s-%d.sock", c.name, spec.Room), nil
}

func (c openControl) RemoveRoom(_ context.Context, room uint64) error {
	c.log.add(fmt.Sprintf("remove %s %d", c.name, room))
	return nil
}

// TestSpareSenderSide: a request given an instance with a spare sender
// side takes its room id and endpoint and opens only the receiver side
// of that hop; the supervisor opens a new spare in its place once the
// instance's Run returns (not while the request starts), counts none
// among the instance's open rooms, and removes the spares at release.
func TestSpareSenderSide(t *testing.T) {
	log := &callLog{}
	calls := func() []string {
		log.mu.Lock()
		defer log.mu.Unlock()
		return slices.Clone(log.events)
	}
	s := &Supervisor{logger: hclog.NewNullLogger(), cfg: config.Default()}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	s.pipeline.Store(true)
	alive := make(chan struct{})
	var lives []*life
	var chosen []*instance
	for stage, name := range []string{"enc", "tr", "dec"} {
		in := &instance{id: name, phase: name, stage: stage, cfg: config.Phase{Name: name, HangTimeout: time.Minute}}
		l := &life{in: in, proc: &process{done: alive}, ctl: openControl{name: name, log: log}, users: map[*attempt]struct{}{}}
		in.cur.Store(l)
		s.phases = append(s.phases, &phase{cfg: in.cfg, instances: []*instance{in}})
		lives, chosen = append(lives, l), append(chosen, in)
	}

	for _, l := range lives {
		s.fillSpare(l) // the last phase sends nothing: no spare
	}
	s.bg.Wait()
	if got, want := calls(), []string{"open enc 1 sender", "open tr 2 sender"}; !sameSet(got, want) {
		t.Fatalf("after start: %v, want %v", got, want)
	}
	if n := lives[0].unspared([]sdk.RoomInfo{{Room: 1}}); n != 0 {
		t.Errorf("the encoder's spare counts as %d open rooms, want 0", n)
	}

	a := &attempt{r: &request{changed: make(chan struct{})}, trace: &attemptTrace{}, lives: lives, returned: make([]bool, len(lives))}
	rooms := s.reserveRooms(a, chosen)
	s.bg.Wait()
	if !slices.Equal(rooms, []uint64{1, 2}) {
		t.Fatalf("rooms %v, want the spares' [1 2]", rooms)
	}
	if got := calls()[2:]; len(got) != 0 {
		t.Fatalf("opened %v as the request took the spares; want nothing before the instances' Runs return", got)
	}
	for _, l := range lives {
		s.fillSpare(l) // as runPhases does when l's Run returns
	}
	s.bg.Wait()
	if got, want := calls()[2:], []string{"open enc 3 sender", "open tr 4 sender"}; !sameSet(got, want) {
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
	if got, want := calls()[4:], []string{"open tr 1 receiver", "open dec 2 receiver"}; !sameSet(got, want) {
		t.Fatalf("the request opened %v, want only the receiver sides %v", got, want)
	}
	if n := lives[0].unspared([]sdk.RoomInfo{{Room: 1}, {Room: 3}}); n != 1 {
		t.Errorf("the encoder counts %d open rooms besides its new spare, want 1 (the request's)", n)
	}

	s.removeRooms(a)
	s.bgCancel()
	s.removeSpares()
	got := calls()[6:]
	if len(got) != 6 || !sameSet(got[:2], []string{"remove enc 1", "remove tr 2"}) ||
		!sameSet(got[2:4], []string{"remove tr 1", "remove dec 2"}) || !sameSet(got[4:], []string{"remove enc 3", "remove tr 4"}) {
		t.Fatalf("removed %v; want the request's senders, then its receivers, then at release the spares", got)
	}
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

package supervisor

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// TestCredit: an instance at max_rooms has no credit until a room is
// removed; one that refused a room while it held some has none until
// one of those is removed (not a side it never opened); one that held
// none is not blocked; a request is placed again after each refusal,
// up to maxRefusals.
func TestCredit(t *testing.T) {
	woken := 0
	in := &instance{id: "transformer-0", phase: "transformer", cfg: config.Phase{MaxRooms: 2}, credit: func() { woken++ }}
	side := func() *roomSide {
		in.recv.Add(1)
		return &roomSide{l: &life{in: in}, role: sdk.RoleReceiver, gone: make(chan struct{})}
	}
	a, b := side(), side()
	a.open()
	a.open() // once per side
	b.open()
	if in.hasCredit() || in.held.Load() != 2 {
		t.Fatalf("two rooms of max_rooms 2: credit %v, held %d", in.hasCredit(), in.held.Load())
	}
	a.end(nil)
	if !in.hasCredit() || woken != 1 || in.recv.Load() != 1 || in.held.Load() != 1 {
		t.Fatalf("a room removed: credit %v, woken %d, recv %d, held %d", in.hasCredit(), woken, in.recv.Load(), in.held.Load())
	}

	s := &Supervisor{}
	r := &request{id: "r1", changed: make(chan struct{})}
	refusals := 0
	refusal := &refusedError{in: in, err: fmt.Errorf("open room 7: %w: inputs of 100 bytes with 100 of 150 in use", sdk.ErrNoCredit)}
	again, end := s.refused(r, fmt.Errorf("attempt: %w", refusal), &refusals)
	if !again || end != nil || in.hasCredit() {
		t.Fatalf("refused holding 1 room: again %v, end %v, credit %v; want placed again, no credit", again, end, in.hasCredit())
	}
	if ev := r.info.Events; len(ev) != 1 || ev[0].What != "refused" || !strings.Contains(ev[0].Detail, "placed again (it held 1 rooms)") {
		t.Fatalf("events %+v", ev)
	}
	c := side() // another attempt's side, refused too: never opened
	c.end(nil)
	if in.hasCredit() {
		t.Fatal("a side the instance never opened ended its refusal's block")
	}
	b.end(nil)
	if !in.hasCredit() {
		t.Fatal("no credit after a room of the refusing instance was removed")
	}

	// Holding nothing: not blocked, placed again, up to maxRefusals.
	for refusals < maxRefusals-1 {
		if again, end := s.refused(r, refusal, &refusals); !again || end != nil || !in.hasCredit() {
			t.Fatalf("refusal %d holding none: again %v, end %v, credit %v", refusals, again, end, in.hasCredit())
		}
	}
	again, end = s.refused(r, refusal, &refusals)
	if again || !errors.Is(end, sdk.ErrNoCredit) || !strings.Contains(end.Error(), "refused 100 times for want of credit; the last, by instance transformer-0") {
		t.Fatalf("refusal %d: again %v, end %v", refusals, again, end)
	}
	if again, end := s.refused(r, errors.New("other"), &refusals); again || end != nil {
		t.Fatalf("another error: %v, %v", again, end)
	}
}

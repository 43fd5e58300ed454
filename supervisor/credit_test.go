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
// removed; one that refused a room has none until one of the rooms it
// held then is removed; a refusal with no room held is the request's
// end, with the reason.
func TestCredit(t *testing.T) {
	woken := 0
	in := &instance{id: "transformer-0", phase: "transformer", cfg: config.Phase{MaxRooms: 2}, credit: func() { woken++ }}
	in.recv.Store(1)
	if !in.hasCredit() {
		t.Fatal("one room of max_rooms 2: no credit")
	}
	in.recv.Store(2)
	if in.hasCredit() {
		t.Fatal("two rooms of max_rooms 2: credit")
	}
	in.creditBack()
	if !in.hasCredit() || woken != 1 {
		t.Fatalf("a room removed: credit %v, waiters woken %d times", in.hasCredit(), woken)
	}

	s := &Supervisor{}
	r := &request{id: "r1", changed: make(chan struct{})}
	refusal := &refusedError{in: in, err: fmt.Errorf("open room 7: %w: inputs of 100 bytes with 100 of 150 in use", sdk.ErrNoCredit)}
	again, end := s.refused(r, refusal)
	if !again || end != nil || in.hasCredit() {
		t.Fatalf("refused holding 1 room: again %v, end %v, credit %v; want placed again, no credit", again, end, in.hasCredit())
	}
	if ev := r.info.Events; len(ev) != 1 || ev[0].What != "refused" || !strings.Contains(ev[0].Detail, "placed again (it held 1 receiver rooms)") {
		t.Fatalf("events %+v", ev)
	}
	in.recv.Store(2) // another room placed meanwhile: still none
	if in.hasCredit() {
		t.Fatal("credit after a refusal, before any room was removed")
	}
	in.creditBack()
	if !in.hasCredit() {
		t.Fatal("no credit after a room of the refusing instance was removed")
	}

	in.recv.Store(0)
	again, end = s.refused(r, fmt.Errorf("attempt: %w", refusal))
	if again || end == nil || !errors.Is(end, sdk.ErrNoCredit) || !strings.Contains(end.Error(), "instance transformer-0 of phase transformer refused the request with no room open, so it never will") {
		t.Fatalf("refused holding none: again %v, end %v", again, end)
	}
	if again, end := s.refused(r, errors.New("other")); again || end != nil {
		t.Fatalf("another error: %v, %v", again, end)
	}
}

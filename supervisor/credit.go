package supervisor

import (
	"errors"
	"fmt"

	"github.com/phased/phased/sdk"
)

// Credits (docs/protocol.md 2.4): an instance holds at most its phase's
// max_rooms receiver rooms at once, and refuses a room past its credits
// (its max_input_bytes, or a limit of its own) with sdk.ErrNoCredit. The
// supervisor never offers a policy an instance at max_rooms, nor one
// that refused a room until one of its rooms is removed. A request that
// finds every ready instance of a phase full waits for a room to be
// removed; one refused is placed again, without spending its retries.

// hasCredit reports whether the instance may be given one more receiver
// room.
func (in *instance) hasCredit() bool {
	max := in.cfg.MaxRooms
	return !in.refusing.Load() && (max <= 0 || in.recv.Load() < int64(max))
}

// open records that a receiver side's OpenRoom succeeded: its instance
// holds credit for it until it is removed. Once per side.
func (side *roomSide) open() {
	if side.opened.CompareAndSwap(false, true) {
		side.l.in.held.Add(1)
	}
}

// creditBack uncounts a receiver room removed from the instance (opened:
// the instance held credit for it, which ends a refusal's block), and
// wakes the requests that wait for credit.
func (in *instance) creditBack(opened bool) {
	in.recv.Add(-1)
	if opened {
		in.held.Add(-1)
		in.refusing.Store(false)
	}
	in.wake()
}

func (in *instance) wake() {
	if in.credit != nil {
		in.credit()
	}
}

// creditless returns the name of a phase none of whose ready instances
// has credit (each at max_rooms, or refused a room), "" when every phase
// has one (or has none ready: unservable's business).
func (s *Supervisor) creditless() string {
	for _, ph := range s.phases {
		ready, credit := false, false
		for _, in := range ph.all() {
			if in.currentState() == stateReady {
				ready = true
				credit = credit || in.hasCredit()
			}
		}
		if ready && !credit {
			return ph.cfg.Name
		}
	}
	return ""
}

// waitingForCredit records, once per attempt, that the request waits for
// a room of phase to be removed.
func (a *attempt) waitingForCredit(phase string) {
	if a.creditWait {
		return
	}
	a.creditWait = true
	a.r.event(Event{What: "waiting for credit", Detail: fmt.Sprintf("every ready instance of phase %s is at its max_rooms or refused a room; placed once one of their rooms is removed", phase)})
}

// refusedError is the error of an attempt whose room an instance refused
// for want of credit.
type refusedError struct {
	in  *instance
	err error
}

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// maxRefusals bounds the refusals one request takes before it fails: a
// plugin that refuses whatever it holds would otherwise have it placed
// again forever.
const maxRefusals = 100

// refused handles an attempt that ended with err: if an instance refused
// one of its rooms for want of credit, the request is placed again
// (again), its retries untouched, and an instance that held rooms then
// is offered nothing until one of them is removed (one that held none
// has nothing to wait for). refusals counts the request's refusals;
// past maxRefusals the last one is its end.
func (s *Supervisor) refused(r *request, err error, refusals *int) (again bool, end error) {
	var re *refusedError
	if !errors.As(err, &re) {
		return false, nil
	}
	if *refusals++; *refusals >= maxRefusals {
		return false, fmt.Errorf("refused %d times for want of credit; the last, by instance %s: %w", *refusals, re.in.id, re.err)
	}
	in := re.in
	held := in.held.Load()
	if held > 0 {
		in.refusing.Store(true)
		if in.held.Load() == 0 {
			// Its rooms went between the count and the block: no
			// removal is left to end it.
			in.refusing.Store(false)
			in.wake()
		}
	}
	r.event(Event{What: "refused", Phase: in.phase, Instance: in.id, Detail: fmt.Sprintf("%v; placed again (it held %d rooms)", re.err, held)})
	return true, nil
}

// asRefused wraps the error of opening a receiver side on in as a
// refusal when it is one.
func asRefused(in *instance, err error) error {
	if errors.Is(err, sdk.ErrNoCredit) {
		return &refusedError{in: in, err: err}
	}
	return err
}

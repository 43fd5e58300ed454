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
// that refused a room until one of its rooms is removed; a request finds
// every ready instance of a phase full waits for a room to be removed,
// and one refused is placed again, without spending its retries.

// hasCredit reports whether the instance may be given one more receiver
// room.
func (in *instance) hasCredit() bool {
	max := in.cfg.MaxRooms
	return !in.refusing.Load() && (max <= 0 || in.recv.Load() < int64(max))
}

// creditBack uncounts a receiver room removed from the instance, ends a
// refusal's block, and wakes the requests that wait for credit.
func (in *instance) creditBack() {
	in.recv.Add(-1)
	in.refusing.Store(false)
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

// refused handles an attempt that ended with err: if an instance refused
// one of its rooms for want of credit, that instance is offered nothing
// until one of the rooms it holds is removed, and refused says so (the
// request is placed again, its retries untouched). An instance that
// refused while it held no room at all will never take the request: its
// error is then the request's.
func (s *Supervisor) refused(r *request, err error) (again bool, end error) {
	var re *refusedError
	if !errors.As(err, &re) {
		return false, nil
	}
	held := re.in.recv.Load()
	if held == 0 {
		return false, fmt.Errorf("instance %s of phase %s refused the request with no room open, so it never will: %w; raise the phase's max_input_bytes (or the plugin's own limit)", re.in.id, re.in.phase, re.err)
	}
	re.in.refusing.Store(true)
	if re.in.recv.Load() < held {
		// A room went between the count and the block: no removal is
		// left to end the block for it.
		re.in.refusing.Store(false)
		if re.in.credit != nil {
			re.in.credit()
		}
	}
	r.event(Event{What: "refused", Phase: re.in.phase, Instance: re.in.id, Detail: fmt.Sprintf("%v; placed again (it held %d receiver rooms)", re.err, held)})
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

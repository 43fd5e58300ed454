// Package p2c is a phased scheduling policy, the power of two random
// choices: for each phase it draws two distinct ready instances at random
// and takes the one with fewer open rooms (ties: the lower recent latency,
// then the first drawn). It spreads load almost as well as least-loaded
// while avoiding its herd behaviour when the load it sees is stale.
package p2c

import (
	"context"

	"github.com/phased/phased/policies/internal/rng"
	"github.com/phased/phased/sdk"
)

// Name is the policy's name in configs, logs and errors.
const Name = "p2c"

// Version is the policy's own version.
const Version = "0.1.0"

// Policy is the power-of-two-choices policy; safe for concurrent use.
type Policy struct {
	rng *rng.Source
}

// New returns the policy seeded from the operating system.
func New() *Policy { return &Policy{rng: rng.New()} }

// NewSeeded returns the policy with a fixed seed (for tests and
// simulations).
func NewSeeded(seed1, seed2 uint64) *Policy {
	return &Policy{rng: rng.Seeded(seed1, seed2)}
}

// Info describes the policy.
func (p *Policy) Info(context.Context) (sdk.Info, error) {
	return sdk.PolicyInfo(Name, Version), nil
}

// Schedule picks, per phase, the less loaded of two random ready
// candidates (the only one, if there is one).
func (p *Policy) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	return sdk.EachPhase(Name, req, func(_ string, ready []sdk.Candidate) (sdk.Candidate, error) {
		if len(ready) == 1 {
			return ready[0], nil
		}
		i := p.rng.IntN(len(ready))
		j := p.rng.IntN(len(ready) - 1)
		if j >= i {
			j++ // distinct from i
		}
		a, b := ready[i], ready[j]
		if b.OpenRooms < a.OpenRooms || b.OpenRooms == a.OpenRooms && b.LatencyEWMAms < a.LatencyEWMAms {
			return b, nil
		}
		return a, nil
	})
}

var _ sdk.Policy = (*Policy)(nil)

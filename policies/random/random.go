// Package random is a phased scheduling policy: for each phase it chooses
// a ready instance uniformly at random.
package random

import (
	"context"

	"github.com/phased/phased/policies/internal/rng"
	"github.com/phased/phased/sdk"
)

// Name is the policy's name in configs, logs and errors.
const Name = "random"

// Version is the policy's own version.
const Version = "0.1.0"

// Policy is the random policy; safe for concurrent use.
type Policy struct {
	rng *rng.Source
}

// New returns the policy seeded from the operating system.
func New() *Policy { return &Policy{rng: rng.New()} }

// NewSeeded returns the policy with a fixed seed: the same seed and the
// same requests give the same choices (for tests and simulations).
func NewSeeded(seed1, seed2 uint64) *Policy {
	return &Policy{rng: rng.Seeded(seed1, seed2)}
}

// Info describes the policy.
func (p *Policy) Info(context.Context) (sdk.Info, error) {
	return sdk.PolicyInfo(Name, Version), nil
}

// Schedule picks, per phase, one ready candidate at random.
func (p *Policy) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	return sdk.EachPhase(Name, req, func(_ string, ready []sdk.Candidate) (sdk.Candidate, error) {
		return ready[p.rng.IntN(len(ready))], nil
	})
}

var _ sdk.Policy = (*Policy)(nil)

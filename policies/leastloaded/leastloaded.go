// Package leastloaded is a phased scheduling policy: for each phase it
// chooses the ready instance with the fewest open rooms, ties broken by the
// lowest recent latency, then by the lowest index. It keeps no state at
// all: the load comes with every Schedule call.
package leastloaded

import (
	"context"

	"github.com/phased/phased/sdk"
)

// Name is the policy's name in configs, logs and errors.
const Name = "leastloaded"

// Version is the policy's own version.
const Version = "0.1.0"

// Policy is the least-loaded policy. It is stateless and safe for
// concurrent use; the zero value is ready.
type Policy struct{}

// New returns the policy.
func New() *Policy { return &Policy{} }

// Info describes the policy.
func (p *Policy) Info(context.Context) (sdk.Info, error) {
	return sdk.PolicyInfo(Name, Version), nil
}

// Schedule picks, per phase, the ready candidate that Less puts first.
func (p *Policy) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	return sdk.EachPhase(Name, req, func(_ string, ready []sdk.Candidate) (sdk.Candidate, error) {
		best := ready[0]
		for _, c := range ready[1:] {
			if Less(c, best) {
				best = c
			}
		}
		return best, nil
	})
}

// Less reports whether a is less loaded than b: fewer open rooms, then a
// lower latency EWMA, then a lower index.
func Less(a, b sdk.Candidate) bool {
	switch {
	case a.OpenRooms != b.OpenRooms:
		return a.OpenRooms < b.OpenRooms
	case a.LatencyEWMAms != b.LatencyEWMAms:
		return a.LatencyEWMAms < b.LatencyEWMAms
	}
	return a.Index < b.Index
}

var _ sdk.Policy = (*Policy)(nil)

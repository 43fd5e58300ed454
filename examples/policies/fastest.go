// Package fastest is a third-party phased scheduling policy, written the
// way any author outside phased writes one: in its own Go module, importing
// only phased's SDK. For each phase it picks the ready instance whose
// recent requests ran fastest (lowest latency EWMA); an instance that has
// not run any request yet is tried first, so that every instance gets
// measured; ties go to the instance with fewer open rooms, then the lower
// index.
package fastest

import (
	"context"

	"github.com/phased/phased/sdk"
)

// Name is the policy's name: the binary is phased-policy-fastest, and a
// config says policy = "fastest".
const Name = "fastest"

// Version is this policy's own version.
const Version = "1.0.0"

// Policy is the fastest-instance policy; stateless, so safe for concurrent
// use and for restarts.
type Policy struct{}

// Info describes the policy to the supervisor.
func (Policy) Info(context.Context) (sdk.Info, error) { return sdk.PolicyInfo(Name, Version), nil }

// Schedule picks, per phase, the ready candidate that faster puts first.
func (Policy) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	return sdk.EachPhase(Name, req, func(_ string, ready []sdk.Candidate) (sdk.Candidate, error) {
		best := ready[0]
		for _, c := range ready[1:] {
			if faster(c, best) {
				best = c
			}
		}
		return best, nil
	})
}

// faster reports whether a should be chosen over b.
func faster(a, b sdk.Candidate) bool {
	switch {
	case (a.LatencyEWMAms == 0) != (b.LatencyEWMAms == 0):
		return a.LatencyEWMAms == 0 // not measured yet: try it
	case a.LatencyEWMAms != b.LatencyEWMAms:
		return a.LatencyEWMAms < b.LatencyEWMAms
	case a.OpenRooms != b.OpenRooms:
		return a.OpenRooms < b.OpenRooms
	}
	return a.Index < b.Index
}

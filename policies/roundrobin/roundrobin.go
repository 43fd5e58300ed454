// Package roundrobin is phased's default scheduling policy: for each phase,
// it takes the instances in order, one request each, skipping instances that
// are not ready. It is the counterpart of LightX2V's round_robin.py.
package roundrobin

import (
	"context"
	"sync"

	"github.com/phased/phased/sdk"
)

// Name is the policy's name in configs, logs and errors.
const Name = "roundrobin"

// Version is the policy's own version.
const Version = "0.1.0"

// ErrNoReady is returned when a phase has no ready candidate.
var ErrNoReady = sdk.ErrNoReady

// Policy is the round-robin policy. Its only state is, per phase, the index
// after the last instance it chose; membership always comes from the
// ScheduleRequest, so the policy may be restarted or swapped at any time.
// The zero value is not usable: call New.
type Policy struct {
	mu   sync.Mutex
	next map[string]int // phase -> candidate index to start the next search from
}

// New returns a round-robin policy.
func New() *Policy { return &Policy{next: make(map[string]int)} }

// Info describes the policy.
func (p *Policy) Info(context.Context) (sdk.Info, error) {
	return sdk.PolicyInfo(Name, Version), nil
}

// Schedule picks, for every phase, the first ready candidate at or after the
// phase's cursor in index order, wrapping around, and moves the cursor past
// it.
func (p *Policy) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return sdk.EachPhase(Name, req, func(phase string, ready []sdk.Candidate) (sdk.Candidate, error) {
		// The first ready candidate whose index is at or after the
		// cursor, else the first one (wrapping around).
		cursor := p.next[phase]
		c := ready[0]
		for _, r := range ready {
			if r.Index >= cursor {
				c = r
				break
			}
		}
		p.next[phase] = c.Index + 1
		return c, nil
	})
}

var _ sdk.Policy = (*Policy)(nil)

// Package roundrobin is phased's default scheduling policy: for each phase,
// it takes the instances in order, one request each, skipping instances that
// are not ready. It is the counterpart of LightX2V's round_robin.py.
package roundrobin

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/phased/phased/sdk"
)

// Name is the policy's name in configs, logs and errors.
const Name = "roundrobin"

// Version is the policy's own version.
const Version = "0.1.0"

// ErrNoReady is returned when a phase has no ready candidate.
var ErrNoReady = errors.New("no ready instance")

// Policy is the round-robin policy. Its only state is, per phase, the index
// after the last instance it chose; membership always comes from the
// ScheduleRequest, so the policy may be restarted or swapped at any time.
// The zero value is not usable: call New.
type Policy struct {
	mu   sync.Mutex
	next map[string]int // phase -> index to start the next search from
}

// New returns a round-robin policy.
func New() *Policy { return &Policy{next: make(map[string]int)} }

// Info describes the policy.
func (p *Policy) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Kind: sdk.KindPolicy, Version: Version, APIVersions: []int{sdk.PolicyAPIVersion}}, nil
}

// Schedule picks, for every phase, the first ready candidate at or after the
// phase's cursor in index order, wrapping around, and moves the cursor past
// it.
func (p *Policy) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	choices := make(map[string]string, len(req.Phases))
	for _, ph := range req.Phases {
		c, ok := p.pick(ph)
		if !ok {
			return sdk.Decision{}, fmt.Errorf("%s: phase %q: %w among %d candidates", Name, ph.Phase, ErrNoReady, len(ph.Candidates))
		}
		choices[ph.Phase] = c.ID
	}
	return sdk.Decision{Choices: choices}, nil
}

// pick chooses within one phase; the caller holds p.mu.
func (p *Policy) pick(ph sdk.PhaseCandidates) (sdk.Candidate, bool) {
	n := len(ph.Candidates)
	if n == 0 {
		return sdk.Candidate{}, false
	}
	start := p.next[ph.Phase] % n
	for i := range n {
		c := ph.Candidates[(start+i)%n]
		if c.Ready {
			p.next[ph.Phase] = (start + i + 1) % n
			return c, true
		}
	}
	return sdk.Candidate{}, false
}

var _ sdk.Policy = (*Policy)(nil)

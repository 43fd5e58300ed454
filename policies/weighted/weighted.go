// Package weighted is a phased scheduling policy: smooth weighted round
// robin (as in nginx), per phase, with each instance's weight from its
// "weight" label, which the supervisor sets from the phase's weights in the
// config. Over any window of W requests (W the sum of the weights), each
// instance gets its weight's share, and the picks are interleaved rather
// than in runs: weights 5, 1, 1 give a a b a c a a, not a a a a a b c.
package weighted

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/phased/phased/sdk"
)

// Name is the policy's name in configs, logs and errors.
const Name = "weighted"

// Version is the policy's own version.
const Version = "0.1.0"

// WeightLabel is the candidate label that carries the weight; without it
// an instance weighs 1.
const WeightLabel = "weight"

// MaxWeight bounds a weight.
const MaxWeight = 1000

// Policy is the smooth weighted round-robin policy; safe for concurrent
// use. Its state is, per phase, each ready instance's current weight;
// membership comes with every call (an instance that is not ready or gone
// loses its state and starts afresh when it comes back), so the policy may
// be restarted or swapped at any time.
type Policy struct {
	mu      sync.Mutex
	current map[string]map[string]int // phase -> instance id -> current weight
}

// New returns the policy.
func New() *Policy { return &Policy{current: make(map[string]map[string]int)} }

// Info describes the policy.
func (p *Policy) Info(context.Context) (sdk.Info, error) {
	return sdk.PolicyInfo(Name, Version), nil
}

// Weight returns a candidate's weight from its label: 1 when unlabelled,
// an error when the label is not an integer from 1 to MaxWeight.
func Weight(c sdk.Candidate) (int, error) {
	v, ok := c.Labels[WeightLabel]
	if !ok {
		return 1, nil
	}
	w, err := strconv.Atoi(v)
	if err != nil || w < 1 || w > MaxWeight {
		return 0, fmt.Errorf("instance %s: label %s=%q is not a weight from 1 to %d", c.ID, WeightLabel, v, MaxWeight)
	}
	return w, nil
}

// Schedule picks, per phase: every ready candidate's current weight grows
// by its weight, the largest (lowest index on a tie) is chosen, and its
// current weight drops by the sum of the weights.
func (p *Policy) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return sdk.EachPhase(Name, req, func(phase string, ready []sdk.Candidate) (sdk.Candidate, error) {
		weights := make([]int, len(ready))
		for i, c := range ready {
			w, err := Weight(c)
			if err != nil {
				return sdk.Candidate{}, err
			}
			weights[i] = w
		}
		old := p.current[phase]
		cur := make(map[string]int, len(ready)) // drops the instances gone
		total, best := 0, 0
		for i, c := range ready {
			cur[c.ID] = old[c.ID] + weights[i]
			total += weights[i]
			if cur[c.ID] > cur[ready[best].ID] {
				best = i
			}
		}
		cur[ready[best].ID] -= total
		p.current[phase] = cur
		return ready[best], nil
	})
}

var _ sdk.Policy = (*Policy)(nil)

// Package affinity is a phased scheduling policy: requests that share a key
// (a LoRA, a model variant: `supervisor submit --key`) go to the same
// instance of each phase while it is ready, so that what the instance
// loaded for that key stays useful. It uses rendezvous (highest random
// weight) hashing: each ready instance scores hash(key, instance id) and
// the highest wins. When an instance goes away, only its keys move (each to
// its own next best); when one comes back, only the keys it wins move to
// it: the fewest keys move that can. A request without a key is hashed on
// its id, which spreads such requests evenly.
package affinity

import (
	"context"

	"github.com/zeebo/xxh3"

	"github.com/phased/phased/sdk"
)

// Name is the policy's name in configs, logs and errors.
const Name = "affinity"

// Version is the policy's own version.
const Version = "0.1.0"

// Policy is the affinity policy. It is stateless and safe for concurrent
// use; the zero value is ready.
type Policy struct{}

// New returns the policy.
func New() *Policy { return &Policy{} }

// Info describes the policy.
func (p *Policy) Info(context.Context) (sdk.Info, error) {
	return sdk.PolicyInfo(Name, Version), nil
}

// Schedule picks, per phase, the ready candidate with the highest Score
// for the request's key (its id when it has none).
func (p *Policy) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	key := req.Key
	if key == "" {
		key = req.RequestID
	}
	return sdk.EachPhase(Name, req, func(phase string, ready []sdk.Candidate) (sdk.Candidate, error) {
		best, bestScore := ready[0], Score(key, ready[0].ID)
		for _, c := range ready[1:] {
			if s := Score(key, c.ID); s > bestScore || s == bestScore && c.ID < best.ID {
				best, bestScore = c, s
			}
		}
		return best, nil
	})
}

// Score is the rendezvous weight of an instance for a key.
func Score(key, instance string) uint64 {
	return xxh3.HashString(instance + "\x00" + key)
}

var _ sdk.Policy = (*Policy)(nil)

// Package rng is the random source of the randomized policies: safe for
// concurrent use, seeded from the system or, for tests and simulations,
// with a fixed seed.
package rng

import (
	"math/rand/v2"
	"sync"
)

// Source is a random source safe for concurrent use.
type Source struct {
	mu sync.Mutex
	r  *rand.Rand
}

// New returns a source seeded from the operating system.
func New() *Source { return Seeded(rand.Uint64(), rand.Uint64()) }

// Seeded returns a source with a fixed seed: the same seed gives the same
// numbers.
func Seeded(seed1, seed2 uint64) *Source {
	return &Source{r: rand.New(rand.NewPCG(seed1, seed2))}
}

// IntN returns a number in [0, n); n must be positive.
func (s *Source) IntN(n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.IntN(n)
}

package transfer

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/phased/phased/sdk"
)

// BackendCounters are what a manager moved on one backend since Start.
type BackendCounters struct {
	Backend sdk.Backend
	// Sent counts the Send calls that succeeded, SentBytes their
	// tensors' bytes, and SendTime the time they took in all (from the
	// call to the receiver's Success queued).
	Sent      uint64
	SentBytes uint64
	SendTime  time.Duration
	// Received counts the Receive calls that returned tensors, and
	// ReceivedBytes their bytes.
	Received      uint64
	ReceivedBytes uint64
}

// counters are a manager's BackendCounters, one per backend used.
type counters struct {
	mu sync.Mutex
	by map[sdk.Backend]*BackendCounters
}

func (c *counters) get(b sdk.Backend) *BackendCounters {
	if c.by == nil {
		c.by = map[sdk.Backend]*BackendCounters{}
	}
	bc := c.by[b]
	if bc == nil {
		bc = &BackendCounters{Backend: b}
		c.by[b] = bc
	}
	return bc
}

func (c *counters) sent(b sdk.Backend, bytes int64, took time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	bc := c.get(b)
	bc.Sent++
	bc.SentBytes += uint64(bytes)
	bc.SendTime += took
}

func (c *counters) received(b sdk.Backend, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	bc := c.get(b)
	bc.Received++
	bc.ReceivedBytes += uint64(bytes)
}

// Counters returns what the manager moved since Start, per backend, in
// the order of the backends' names.
func (m *Manager) Counters() []BackendCounters {
	m.counters.mu.Lock()
	defer m.counters.mu.Unlock()
	out := make([]BackendCounters, 0, len(m.counters.by))
	for _, bc := range m.counters.by {
		out = append(out, *bc)
	}
	slices.SortFunc(out, func(a, b BackendCounters) int { return cmp.Compare(a.Backend, b.Backend) })
	return out
}

package phase

import (
	"fmt"
	"sync"

	"github.com/phased/phased/sdk"
)

// credits are what an instance can still accept as a receiver
// (docs/protocol.md 2.4): rooms with buffers, and the bytes of those
// buffers, bounded by the config's max_rooms and max_input_bytes (0: no
// limit). A receiver side takes its credit before its buffers are
// allocated and gives it back when it is removed.
type credits struct {
	mu       sync.Mutex
	maxRooms int
	maxBytes int64
	held     map[uint64]int64 // room -> its input bytes
	bytes    int64            // the sum of held
}

// set takes the limits of the instance's config.
func (c *credits) set(cfg sdk.InstanceConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxRooms, c.maxBytes = cfg.MaxRooms, cfg.MaxInputBytes
}

// take reserves a receiver room of n input bytes and reports whether it
// did (false for a room it holds already, whose open then fails), or
// says, wrapping sdk.ErrNoCredit, which limit it would pass. Inputs over
// max_input_bytes on their own never fit: that error wraps sdk.ErrInvalid
// instead, so that the request fails rather than waits.
func (c *credits) take(room uint64, n int64) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.held[room]; ok {
		return false, nil
	}
	switch {
	case c.maxBytes > 0 && n > c.maxBytes:
		return false, fmt.Errorf("%w: inputs of %d bytes are more than max_input_bytes %d on their own: no such request ever fits; raise max_input_bytes", sdk.ErrInvalid, n, c.maxBytes)
	case c.maxRooms > 0 && len(c.held) >= c.maxRooms:
		return false, fmt.Errorf("%w: %d receiver rooms open, max_rooms %d", sdk.ErrNoCredit, len(c.held), c.maxRooms)
	case c.maxBytes > 0 && c.bytes+n > c.maxBytes:
		return false, fmt.Errorf("%w: inputs of %d bytes with %d of %d in use, max_input_bytes %d", sdk.ErrNoCredit, n, c.bytes, c.maxBytes, c.maxBytes)
	}
	if c.held == nil {
		c.held = make(map[uint64]int64)
	}
	c.held[room] = n
	c.bytes += n
	return true, nil
}

// give returns a room's credit; a room that holds none is ignored.
func (c *credits) give(room uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.held[room]; ok {
		delete(c.held, room)
		c.bytes -= n
	}
}

// left returns the rooms and bytes the instance can still accept, -1
// for no limit.
func (c *credits) left() (rooms, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rooms, bytes = -1, -1
	if c.maxRooms > 0 {
		rooms = int64(c.maxRooms - len(c.held))
	}
	if c.maxBytes > 0 {
		bytes = c.maxBytes - c.bytes
	}
	return rooms, bytes
}

// metrics are the credit gauges of Status.
func (c *credits) metrics() []sdk.Metric {
	rooms, bytes := c.left()
	return []sdk.Metric{
		{Name: "credit_rooms", Help: "Receiver rooms the instance can still accept (max_rooms); -1: no limit.", Value: float64(rooms)},
		{Name: "credit_bytes", Help: "Input bytes the instance can still accept (max_input_bytes); -1: no limit.", Value: float64(bytes)},
	}
}

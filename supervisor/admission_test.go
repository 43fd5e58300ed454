package supervisor

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/phased/phased/supervisor/config"
)

// TestRetryAfter: a refusal's hint is the rounds of max_inflight
// requests ahead of it times the slot time requests have lately held
// (a moving average), in whole seconds up, from 1 s to an hour; and a
// QueueFullError is ErrQueueFull, answered 429.
func TestRetryAfter(t *testing.T) {
	s := &Supervisor{cfg: &config.Config{MaxInflight: 4, MaxQueue: 8}}
	if got := s.retryAfter(8); got != time.Second {
		t.Errorf("no request served yet: %v, want 1s", got)
	}
	s.served(1500 * time.Millisecond)
	if got := s.retryAfter(8); got != 3*time.Second {
		t.Errorf("8 waiting, 4 at a time, 1.5 s each: %v, want 3s", got)
	}
	if got := s.retryAfter(9); got != 5*time.Second {
		t.Errorf("9 waiting (3 rounds of 1.5 s): %v, want 5s (4.5 s up)", got)
	}
	for range 100 {
		s.served(500 * time.Millisecond)
	}
	if got := s.retryAfter(4); got != time.Second {
		t.Errorf("4 waiting after 100 requests of 0.5 s: %v, want 1s", got)
	}
	s.served(10 * time.Hour)
	if got := s.retryAfter(8); got != time.Hour {
		t.Errorf("after a very long one: %v, want the 1h bound", got)
	}
	err := error(&QueueFullError{Waiting: 8, Max: 8, RetryAfter: 3 * time.Second})
	if !errors.Is(err, ErrQueueFull) || statusOf(err) != http.StatusTooManyRequests {
		t.Errorf("%v: errors.Is ErrQueueFull %v, status %d; want true, 429", err, errors.Is(err, ErrQueueFull), statusOf(err))
	}
	if want := "the queue is full: 8 requests wait for a dispatch slot (max_queue = 8); this one was not accepted: submit it again in 3s, or raise max_queue or max_inflight in the config"; err.Error() != want {
		t.Errorf("error %q\nwant  %q", err, want)
	}
}

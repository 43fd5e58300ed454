package supervisor

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRetryAfter: a refusal's hint is the rounds of max_inflight
// requests ahead of it times the slot time requests have lately held
// (a moving average), in whole seconds up, from 1 s to an hour; and a
// QueueFullError is ErrQueueFull, answered 429.
func TestRetryAfter(t *testing.T) {
	var q waitQueue
	q.init(4)
	if got := q.retryAfter(8); got != time.Second {
		t.Errorf("no request served yet: %v, want 1s", got)
	}
	if _, ok := q.untilSlot(1); ok {
		t.Error("an estimate before any request held a slot")
	}
	q.served(1500 * time.Millisecond)
	if got := q.retryAfter(8); got != 3*time.Second {
		t.Errorf("8 waiting, 4 at a time, 1.5 s each: %v, want 3s", got)
	}
	if got := q.retryAfter(9); got != 5*time.Second {
		t.Errorf("9 waiting (3 rounds of 1.5 s): %v, want 5s (4.5 s up)", got)
	}
	if got, ok := q.untilSlot(5); !ok || got != 3*time.Second {
		t.Errorf("position 5, 4 at a time, 1.5 s each: %v (%v), want 3s", got, ok)
	}
	for range 100 {
		q.served(500 * time.Millisecond)
	}
	if got := q.retryAfter(4); got != time.Second {
		t.Errorf("4 waiting after 100 requests of 0.5 s: %v, want 1s", got)
	}
	q.served(10 * time.Hour)
	if got := q.retryAfter(8); got != time.Hour {
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

// queued makes a request for the queue's tests: its priority and its
// deadline, seconds from a fixed instant (0: none).
func queued(q *waitQueue, priority, deadline int) *request {
	r := &request{changed: make(chan struct{}), queue: q, priority: priority}
	if deadline > 0 {
		r.deadline = time.Date(2026, 12, 1, 0, 0, deadline, 0, time.UTC)
	}
	return r
}

func granted(r *request) bool {
	select {
	case <-r.granted:
		return true
	default:
		return false
	}
}

// TestQueueOrder: the queue is in priority order, then deadline (none
// last), then arrival; a free slot goes to the first at once, a
// released one to the next; a request that leaves moves the ones behind
// it up and wakes their watchers; one that joins ahead moves the others
// down.
func TestQueueOrder(t *testing.T) {
	var q waitQueue
	q.init(1)
	running := queued(&q, 50, 0)
	q.join(running)
	if !granted(running) || q.position(running) != 0 || q.held() != 1 {
		t.Fatalf("the first request with a slot free: granted %v, position %d, held %d; want true, 0, 1", granted(running), q.position(running), q.held())
	}
	// Arrivals, and where each belongs.
	a := queued(&q, 50, 0)  // default priority, no deadline
	b := queued(&q, 50, 60) // the same priority, a deadline: before a
	c := queued(&q, 90, 0)  // a higher priority: first
	d := queued(&q, 50, 30) // an earlier deadline: before b
	e := queued(&q, 50, 0)  // like a, later: after a
	f := queued(&q, 1, 10)  // the lowest priority: last, deadline or not
	for _, r := range []*request{a, b, c, d, e, f} {
		q.join(r)
	}
	names := map[*request]string{a: "a", b: "b", c: "c", d: "d", e: "e", f: "f"}
	order := func() string {
		var s []string
		for _, r := range q.reqs {
			s = append(s, names[r])
		}
		return strings.Join(s, "")
	}
	if got := order(); got != "cdbaef" {
		t.Fatalf("queue order %s, want cdbaef", got)
	}
	for i, r := range []*request{c, d, b, a, e, f} {
		if p := q.position(r); p != i+1 || granted(r) {
			t.Errorf("%s at %d (granted %v), want %d, not granted", names[r], p, granted(r), i+1)
		}
	}
	watchA := a.changed
	if q.leave(b) != true {
		t.Error("leave of a waiting request reported it granted")
	}
	select {
	case <-watchA:
	default:
		t.Error("a moved up and its watchers were not woken")
	}
	if q.position(a) != 3 || q.position(b) != 0 || q.len() != 5 {
		t.Errorf("after b left: a at %d, b at %d, %d waiting; want 3, 0, 5", q.position(a), q.position(b), q.len())
	}
	watchF := f.changed
	g := queued(&q, 100, 0)
	q.join(g)
	select {
	case <-watchF:
	default:
		t.Error("g joined first, f moved down, and its watchers were not woken")
	}
	// Each released slot goes to the first waiting, and only to it.
	next := []*request{g, c, d, a, e, f}
	names[g] = "g"
	for i, r := range next {
		q.release()
		for j, o := range next {
			if granted(o) != (j <= i) {
				t.Fatalf("after %d releases %s granted %v; want the slots to go to g, c, d, a, e, f in turn", i+1, names[o], granted(o))
			}
		}
		if q.position(r) != 0 {
			t.Errorf("%s granted, and still in the queue at %d", names[r], q.position(r))
		}
	}
	if q.held() != 1 || q.len() != 0 {
		t.Errorf("held %d, waiting %d; want 1, 0", q.held(), q.len())
	}
	if q.leave(f) {
		t.Error("leave of a request that had its slot reported it waiting")
	}
	q.release()
	if q.held() != 0 {
		t.Errorf("every slot released, %d held", q.held())
	}
}

// TestSubmissionBounds: priorities and deadlines out of their bounds
// are refused with what is wrong; a deadline is a Go duration in JSON,
// and anything else is refused with what was expected.
func TestSubmissionBounds(t *testing.T) {
	ok := Submission{Prompt: "p", Steps: 1}
	for _, tc := range []struct {
		change func(*Submission)
		err    string // "" for valid
	}{
		{func(s *Submission) {}, ""},
		{func(s *Submission) { s.Priority = 100 }, ""},
		{func(s *Submission) { s.Priority = 101 }, "priority must be between 1 and 100 (or 0, for 50), got 101"},
		{func(s *Submission) { s.Priority = -1 }, "priority must be between 1 and 100 (or 0, for 50), got -1"},
		{func(s *Submission) { s.Deadline = Duration(time.Minute) }, ""},
		{func(s *Submission) { s.Deadline = Duration(-time.Second) }, "deadline must be between 0 (none) and 720h0m0s, got -1s"},
		{func(s *Submission) { s.Deadline = Duration(31 * 24 * time.Hour) }, "deadline must be between 0 (none) and 720h0m0s, got 744h0m0s"},
	} {
		sub := ok
		tc.change(&sub)
		err := sub.Validate()
		if (err == nil) != (tc.err == "") || err != nil && (!errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: %v, want %q", sub, err, tc.err)
		}
	}
	var sub Submission
	if err := json.Unmarshal([]byte(`{"prompt":"p","deadline":"2m30s","priority":7}`), &sub); err != nil || sub.Deadline != Duration(150*time.Second) || sub.Priority != 7 {
		t.Errorf("decoded %+v, %v; want a deadline of 2m30s, priority 7", sub, err)
	}
	b, err := json.Marshal(Submission{Prompt: "p", Deadline: Duration(90 * time.Second)})
	if err != nil || !strings.Contains(string(b), `"deadline":"1m30s"`) || strings.Contains(string(b), "priority") {
		t.Errorf("encoded %s, %v; want deadline \"1m30s\" and no priority", b, err)
	}
	for in, want := range map[string]string{
		`{"deadline":90}`:     `a duration is a string such as "90s" or "2m", not 90`,
		`{"deadline":"soon"}`: `"soon" is not a duration; expected e.g. "90s" or "2m"`,
	} {
		if err := json.Unmarshal([]byte(in), &sub); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
}

package supervisor

// Admission: the queue of requests waiting for a dispatch slot, its
// order (priority, then deadline, then arrival), the slots themselves
// (max_inflight), and the estimates a user sees of when a slot comes.

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phased/phased/supervisor/config"
)

// Priorities of requests: a request of a higher priority is dispatched
// before every queued request of a lower one.
const (
	MinPriority     = 1
	MaxPriority     = 100
	DefaultPriority = 50 // a submission's 0
)

// MaxDeadline bounds a submission's deadline.
const MaxDeadline = config.MaxDeadline

// Duration is a time.Duration that JSON spells as Go does: "90s", "2m".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"90s\" or \"2m\", not %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration; expected e.g. \"90s\" or \"2m\"", s)
	}
	*d = Duration(v)
	return nil
}

// waitQueue is the requests waiting for a dispatch slot, and the slots
// (max_inflight). A slot that frees goes to the first request in queue
// order — the higher priority first, then the earlier deadline (one
// without a deadline after those with one), then the earlier arrival —
// and a request that joins while a slot is free takes it at once. A
// request learns that it has its slot from r.granted.
type waitQueue struct {
	slots int // set by init
	// service is the moving average of how long a request holds its
	// slot, in ns (served), for the estimates of when a slot comes.
	service atomic.Int64

	mu   sync.Mutex
	reqs []*request // waiting, in queue order
	free int        // slots free
	seq  uint64     // arrivals so far
}

// init gives the queue its slots, before any request joins.
func (q *waitQueue) init(slots int) {
	q.slots, q.free = slots, slots
}

// maxWoken bounds the queued requests whose watchers are woken when the
// queue moves: the first ones, whose position a user watches most.
const maxWoken = 1000

// ahead reports whether a goes before b in queue order.
func ahead(a, b *request) bool {
	switch {
	case a.priority != b.priority:
		return a.priority > b.priority
	case a.deadline.Equal(b.deadline):
	case a.deadline.IsZero() || b.deadline.IsZero():
		return b.deadline.IsZero()
	default:
		return a.deadline.Before(b.deadline)
	}
	return a.seq < b.seq
}

// join puts r in the queue in its place (r.priority and r.deadline are
// set) and makes its r.granted, closed when it has a slot.
func (q *waitQueue) join(r *request) {
	r.granted = make(chan struct{})
	q.mu.Lock()
	q.seq++
	r.seq, r.joined = q.seq, time.Now()
	i := sort.Search(len(q.reqs), func(j int) bool { return ahead(r, q.reqs[j]) })
	q.reqs = slices.Insert(q.reqs, i, r)
	moved := q.grantLocked(i + 1)
	q.mu.Unlock()
	wake(moved)
}

// grantLocked gives the free slots to the first requests and returns
// the requests whose position changed: those from index from on, or
// every one once one was granted. q.mu is held.
func (q *waitQueue) grantLocked(from int) []*request {
	n := min(q.free, len(q.reqs))
	for _, r := range q.reqs[:n] {
		close(r.granted)
	}
	if n > 0 {
		q.free -= n
		q.reqs = slices.Delete(q.reqs, 0, n)
		from = 0
	}
	return slices.Clone(q.reqs[min(from, len(q.reqs)):min(len(q.reqs), maxWoken)])
}

// wake wakes the watchers of requests whose queue position changed.
func wake(moved []*request) {
	for _, m := range moved {
		m.mu.Lock()
		m.touchLocked()
		m.mu.Unlock()
	}
}

// leave takes r, which no longer wants a slot, out of the queue; it
// reports false when r had its slot already (then r must release it).
func (q *waitQueue) leave(r *request) bool {
	q.mu.Lock()
	i := slices.Index(q.reqs, r)
	if i < 0 {
		q.mu.Unlock()
		return false
	}
	q.reqs = slices.Delete(q.reqs, i, i+1)
	moved := q.grantLocked(i)
	q.mu.Unlock()
	wake(moved)
	return true
}

// release frees a slot a request held; it goes to the first waiting.
func (q *waitQueue) release() {
	q.mu.Lock()
	q.free++
	moved := q.grantLocked(len(q.reqs))
	q.mu.Unlock()
	wake(moved)
}

// position is r's place in the queue (1: next), 0 when it is not in it.
func (q *waitQueue) position(r *request) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Index(q.reqs, r) + 1
}

// waiting is how many requests wait, and how long the one that joined
// first has waited at now.
func (q *waitQueue) waiting(now time.Time) (int, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var oldest time.Time
	for _, r := range q.reqs {
		if oldest.IsZero() || r.joined.Before(oldest) {
			oldest = r.joined
		}
	}
	if oldest.IsZero() {
		return 0, 0
	}
	return len(q.reqs), now.Sub(oldest)
}

// len is how many requests wait.
func (q *waitQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.reqs)
}

// held is how many slots are held.
func (q *waitQueue) held() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.slots - q.free
}

// QueueFullError is Submit's refusal of a request while max_queue
// requests wait for a dispatch slot: nothing of it was accepted.
type QueueFullError struct {
	Waiting, Max int
	// RetryAfter is when a slot may be free for it: the requests waiting
	// before it, max_inflight at a time, each holding its slot for as long
	// as requests have lately (at least a second).
	RetryAfter time.Duration
}

func (e *QueueFullError) Error() string {
	return fmt.Sprintf("%v: %d requests wait for a dispatch slot (max_queue = %d); this one was not accepted: submit it again in %s, or raise max_queue or max_inflight in the config",
		ErrQueueFull, e.Waiting, e.Max, e.RetryAfter)
}

func (e *QueueFullError) Unwrap() error { return ErrQueueFull }

// untilSlot estimates how long the request at queue position pos waits
// for its slot while every slot is held: the rounds of max_inflight
// requests up to it, each as long as a request has lately held its slot
// (a moving average); 0, false before any request has held one.
func (q *waitQueue) untilSlot(pos int) (time.Duration, bool) {
	service := time.Duration(q.service.Load())
	if service == 0 {
		return 0, false
	}
	slots := max(q.slots, 1)
	rounds := (pos + slots - 1) / slots
	return time.Duration(rounds) * service, true
}

// retryAfter is the Retry-After of a request refused while waiting
// requests wait: when the last of them may have its slot, in whole
// seconds up, from 1 s to an hour.
func (q *waitQueue) retryAfter(waiting int) time.Duration {
	d, _ := q.untilSlot(waiting)
	d = (d + time.Second - 1) / time.Second * time.Second
	return min(max(d, time.Second), time.Hour)
}

// served folds into the service average that a request held its slot
// for d.
func (q *waitQueue) served(d time.Duration) {
	for {
		old := q.service.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/8
		}
		if q.service.CompareAndSwap(old, next) {
			return
		}
	}
}

package supervisor

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/supervisor/config"
)

// TestStatusBounded: 2,500 requests with 64 KiB prompts (which grew the
// supervisor to gigabytes, and one status body to 133 MB) are remembered
// within MaxRetainedBytes, the oldest forgotten; status lists a page of
// them without prompts, small, and its pages go through all of them once,
// in order.
func TestStatusBounded(t *testing.T) {
	s := New(config.Default(), Options{})
	prompt := strings.Repeat("p", 64<<10)
	ended := make(chan struct{})
	close(ended)
	s.mu.Lock()
	var firstID string
	for i := 1; i <= 2500; i++ {
		id := s.ids.next(time.Now())
		if i == 1 {
			firstID = id
		}
		sub := Submission{Prompt: prompt, Steps: 1}
		s.prune(retainedSize(sub))
		state := StateDone
		if i%7 == 0 {
			state = StateFailed
		}
		s.remember(&request{id: id, sub: sub, done: ended, info: RequestInfo{ID: id, State: state, Prompt: prompt, Steps: 1}})
	}
	retained, n, first := s.retained, len(s.order), s.order[0]
	s.mu.Unlock()
	if retained > MaxRetainedBytes || n < 900 || n > 1000 || first == firstID {
		t.Fatalf("remembered %d requests, %d bytes, from %s; want about 990 within %d bytes, the oldest forgotten", n, retained, first, MaxRetainedBytes)
	}
	st := s.Status(context.Background(), os.Getpid(), Page{})
	b, _ := json.Marshal(st)
	if len(st.Requests) != DefaultPageLimit || st.Total != n || st.Counts[StateDone]+st.Counts[StateFailed] != n || st.Next == "" || len(b) > 64<<10 {
		t.Fatalf("first page: %d requests of %d (counts %v), next %q, %d bytes of JSON", len(st.Requests), st.Total, st.Counts, st.Next, len(b))
	}
	if st.Requests[0].Prompt != "" {
		t.Fatal("a status list carries prompts")
	}
	seen, last := 0, ""
	for page := (Page{Limit: 333}); ; {
		st := s.Status(context.Background(), os.Getpid(), page)
		for _, r := range st.Requests {
			if last != "" && !idLess(last, r.ID) {
				t.Fatalf("%s after %s", r.ID, last)
			}
			last = r.ID
			seen++
		}
		if st.Next == "" {
			break
		}
		page.After = st.Next
	}
	if seen != n {
		t.Fatalf("the pages listed %d requests of %d", seen, n)
	}
	// Only the failed ones, a page at a time.
	failed := 0
	for page := (Page{Limit: 50, State: StateFailed}); ; {
		st := s.Status(context.Background(), os.Getpid(), page)
		for _, r := range st.Requests {
			if r.State != StateFailed {
				t.Fatalf("state=failed listed %s, %s", r.ID, r.State)
			}
			failed++
		}
		if st.Next == "" {
			break
		}
		page.After = st.Next
	}
	if failed != st.Counts[StateFailed] || failed == 0 {
		t.Fatalf("state=failed listed %d requests; %d failed", failed, st.Counts[StateFailed])
	}
	// Newest first, a page at a time: the same requests, reversed.
	var newest []string
	for page := (Page{Limit: 77, Newest: true}); ; {
		st := s.Status(context.Background(), os.Getpid(), page)
		for _, r := range st.Requests {
			if len(newest) > 0 && !idLess(r.ID, newest[len(newest)-1]) {
				t.Fatalf("newest first: %s after %s", r.ID, newest[len(newest)-1])
			}
			newest = append(newest, r.ID)
		}
		if st.Next == "" {
			break
		}
		page.After = st.Next
	}
	if len(newest) != n || newest[0] != last {
		t.Fatalf("newest first listed %d of %d, first %s; want %s", len(newest), n, newest[0], last)
	}
	// An empty list is a list.
	if st := s.Status(context.Background(), os.Getpid(), Page{State: StateQueued}); st.Requests == nil || len(st.Requests) != 0 {
		t.Fatalf("no queued requests: %#v", st.Requests)
	}
	if info, err := s.Request(last); err != nil || info.Prompt != prompt {
		t.Fatalf("one request's own view: %v, prompt of %d bytes", err, len(info.Prompt))
	}
}

package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

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
	for i := 1; i <= 2500; i++ {
		id := fmt.Sprintf("r%06d", i)
		sub := Submission{Prompt: prompt, Steps: 1}
		s.prune(retainedSize(sub))
		s.remember(&request{id: id, sub: sub, done: ended, info: RequestInfo{ID: id, State: StateDone, Prompt: prompt, Steps: 1}})
	}
	retained, n, first := s.retained, len(s.order), s.order[0]
	s.mu.Unlock()
	if retained > MaxRetainedBytes || n < 900 || n > 1000 || first == "r000001" {
		t.Fatalf("remembered %d requests, %d bytes, from %s; want about 990 within %d bytes, the oldest forgotten", n, retained, first, MaxRetainedBytes)
	}
	st := s.Status(context.Background(), os.Getpid(), Page{})
	b, _ := json.Marshal(st)
	if len(st.Requests) != DefaultPageLimit || st.Total != n || st.Counts[StateDone] != n || st.Next == "" || len(b) > 64<<10 {
		t.Fatalf("first page: %d requests of %d (counts %v), next %q, %d bytes of JSON", len(st.Requests), st.Total, st.Counts, st.Next, len(b))
	}
	if st.Requests[0].Prompt != "" {
		t.Fatal("a status list carries prompts")
	}
	seen, last := 0, ""
	for page := (Page{Limit: 333}); ; {
		st := s.Status(context.Background(), os.Getpid(), page)
		for _, r := range st.Requests {
			if requestNumber(r.ID) <= requestNumber(last) {
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
	if info, err := s.Request(last); err != nil || info.Prompt != prompt {
		t.Fatalf("one request's own view: %v, prompt of %d bytes", err, len(info.Prompt))
	}
}

package supervisor

import (
	"context"
	"slices"
	"sort"
	"time"
)

// Status is the supervisor's state, as `supervisor status` shows it.
type Status struct {
	PID    int    `json:"pid"`
	RunDir string `json:"run_dir"`
	// State is the supervisor's own: "starting", "running", "releasing"
	// or "released"; Closing is State == "releasing" or later.
	State   string `json:"state"`
	Closing bool   `json:"closing"`
	// ArtifactDir is the absolute directory results are written to.
	ArtifactDir string        `json:"artifact_dir"`
	Phases      []PhaseStatus `json:"phases"`
	Policies    PolicyList    `json:"policies"`
	// Requests is one page of the requests the supervisor remembers, in
	// submission order, without their prompts and events (a request's
	// own view has them); Next is the cursor of the next page ("" after
	// the last), Total how many it remembers and Counts how many of
	// them are in each state.
	Requests []RequestInfo  `json:"requests"`
	Next     string         `json:"next,omitempty"`
	Total    int            `json:"total"`
	Counts   map[string]int `json:"counts"`
	// InstanceExits counts instance processes that exited unasked (or
	// were killed as hung) since this supervisor started; Retried counts
	// the dispatch attempts that followed.
	InstanceExits int64 `json:"instance_exits"`
	Retried       int64 `json:"retried"`
}

// PhaseStatus is one phase and its instances.
type PhaseStatus struct {
	Name      string           `json:"name"`
	Plugin    string           `json:"plugin"`
	Policy    string           `json:"policy"`
	Instances []InstanceStatus `json:"instances"`
	// Min and Max bound its instance count (supervisor scale).
	Min int `json:"min"`
	Max int `json:"max"`
}

// InstanceStatus is one instance: its process, its state and the rooms it
// reports open.
type InstanceStatus struct {
	ID        string `json:"id"`
	PID       int    `json:"pid"`
	State     string `json:"state"`
	OpenRooms int    `json:"open_rooms"`
	Inflight  int    `json:"inflight"`
	Dropped   uint64 `json:"dropped_frames"`
	// Host is the host it runs on, in a cluster (its agent's host
	// label, or the supervisor's); "" without a cluster block.
	Host     string `json:"host,omitempty"`
	Restarts int    `json:"restarts"`            // since the supervisor started
	LastExit string `json:"last_exit,omitempty"` // how its last process ended
	Error    string `json:"error,omitempty"`     // when the instance did not answer
}

// Page selects the requests a Status lists: up to Limit (1 to
// MaxPageLimit; 0 is DefaultPageLimit) after the request After ("" is
// from the first).
type Page struct {
	Limit int
	After string
	// State lists only the requests in that state ("" for all).
	State string
	// Newest lists the newest requests first; After then is the
	// cursor of the older ones.
	Newest bool
}

// The bounds of a Page.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// Status asks every instance for its rooms and returns the whole picture,
// with one page of the requests.
func (s *Supervisor) Status(ctx context.Context, pid int, page Page) Status {
	st := Status{PID: pid, RunDir: s.runDir, ArtifactDir: s.artifactDir(), Policies: s.Policies(), InstanceExits: s.crashes.Load(), Retried: s.retried.Load(),
		Phases: []PhaseStatus{}, Requests: []RequestInfo{}}
	for _, ph := range s.phases {
		ps := PhaseStatus{Name: ph.cfg.Name, Plugin: ph.cfg.Plugin, Policy: ph.live.Load().name, Min: ph.cfg.Min, Max: ph.cfg.Max}
		for _, in := range ph.all() {
			is := InstanceStatus{ID: in.id, PID: in.pid(), State: in.currentState(), Inflight: int(in.inflight.Load()), Host: in.clusterHost}
			in.mu.Lock()
			is.Restarts, is.LastExit = in.restart.counts(), in.lastExit
			in.mu.Unlock()
			if l := in.cur.Load(); (is.State == stateReady || is.State == stateDraining) && l != nil {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				rs, err := l.ctl.Status(cctx)
				cancel()
				if err != nil {
					is.Error = err.Error()
				} else {
					is.OpenRooms, is.Dropped = s.unspared(l, rs.Rooms), rs.DroppedFrames
				}
			}
			ps.Instances = append(ps.Instances, is)
		}
		st.Phases = append(st.Phases, ps)
	}
	s.mu.Lock()
	st.Closing, st.State = s.closing, s.stateLocked()
	ids := s.pageLocked(page, &st)
	s.mu.Unlock()
	for _, id := range ids {
		if r, err := s.lookup(id); err == nil {
			st.Requests = append(st.Requests, r.listed())
		}
	}
	return st
}

// stateCountsLocked counts the requests the supervisor remembers by
// state (a state no request is in is absent); s.mu is held.
func (s *Supervisor) stateCountsLocked() map[string]int {
	counts := map[string]int{}
	for _, id := range s.order {
		r := s.requests[id]
		r.mu.Lock()
		counts[r.info.State]++
		r.mu.Unlock()
	}
	return counts
}

// pageLocked returns the ids of page (of its State only, when it names
// one) and fills in st's Next, Total and Counts; s.mu is held.
func (s *Supervisor) pageLocked(page Page, st *Status) []string {
	limit := page.Limit
	if limit <= 0 {
		limit = DefaultPageLimit
	}
	limit = min(limit, MaxPageLimit)
	st.Total, st.Counts = len(s.order), s.stateCountsLocked()
	// Ids grow with submission order: a page starts at the first id
	// after the cursor (before it, newest first), whether that request
	// is still known.
	order := s.order
	if page.After != "" {
		from := sort.Search(len(order), func(i int) bool { return idLess(page.After, order[i]) })
		if page.Newest {
			order = order[:sort.Search(len(order), func(i int) bool { return !idLess(order[i], page.After) })]
		} else {
			order = order[from:]
		}
	}
	if page.Newest {
		order = slices.Clone(order)
		slices.Reverse(order)
	}
	var ids []string
	for _, id := range order {
		if page.State != "" {
			r := s.requests[id]
			r.mu.Lock()
			state := r.info.State
			r.mu.Unlock()
			if state != page.State {
				continue
			}
		}
		if len(ids) == limit {
			st.Next = ids[len(ids)-1]
			break
		}
		ids = append(ids, id)
	}
	return ids
}

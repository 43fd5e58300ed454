package supervisor

import (
	"context"
	"time"
)

// Status is the supervisor's state, as `supervisor status` shows it.
type Status struct {
	PID      int           `json:"pid"`
	RunDir   string        `json:"run_dir"`
	Closing  bool          `json:"closing"`
	Phases   []PhaseStatus `json:"phases"`
	Policies PolicyList    `json:"policies"`
	Requests []RequestInfo `json:"requests"`
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
	Restarts  int    `json:"restarts"`            // since the supervisor started
	LastExit  string `json:"last_exit,omitempty"` // how its last process ended
	Error     string `json:"error,omitempty"`     // when the instance did not answer
}

// Status asks every instance for its rooms and returns the whole picture.
// Requests are listed without their events.
func (s *Supervisor) Status(ctx context.Context, pid int) Status {
	st := Status{PID: pid, RunDir: s.runDir, Policies: s.Policies(), InstanceExits: s.crashes.Load(), Retried: s.retried.Load()}
	for _, ph := range s.phases {
		ps := PhaseStatus{Name: ph.cfg.Name, Plugin: ph.cfg.Plugin, Policy: ph.live.Load().name}
		for _, in := range ph.instances {
			is := InstanceStatus{ID: in.id, PID: in.pid(), State: in.currentState(), Inflight: int(in.inflight.Load())}
			in.mu.Lock()
			is.Restarts, is.LastExit = in.restart.counts(), in.lastExit
			in.mu.Unlock()
			if l := in.cur.Load(); is.State == stateReady && l != nil {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				rs, err := l.ctl.Status(cctx)
				cancel()
				if err != nil {
					is.Error = err.Error()
				} else {
					is.OpenRooms, is.Dropped = len(rs.Rooms), rs.DroppedFrames
				}
			}
			ps.Instances = append(ps.Instances, is)
		}
		st.Phases = append(st.Phases, ps)
	}
	s.mu.Lock()
	st.Closing = s.closing
	ids := append([]string(nil), s.order...)
	s.mu.Unlock()
	for _, id := range ids {
		if r, err := s.lookup(id); err == nil {
			info := r.snapshot()
			info.Events = nil
			st.Requests = append(st.Requests, info)
		}
	}
	return st
}

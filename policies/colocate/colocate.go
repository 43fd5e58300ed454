// Package colocate is a phased scheduling policy for pipelines whose
// instances run on several hosts: it keeps a request's phases on one host,
// so that its hops go through shared memory rather than over the network,
// as long as that costs little load; otherwise it crosses hosts as few
// times as the load allows.
//
// Each instance's host is its candidate label "host" (HostLabel); an
// instance without it, or with "", is on the supervisor's own host. The
// load of an instance is its open rooms, as for leastloaded.
//
// For each request, an instance is eligible for its phase when it is ready
// and holds at most Slack more open rooms than the least-loaded ready
// instance of that phase. Among the assignments of one eligible instance
// per phase, the policy takes the one with the fewest cross-host hops
// (between consecutive phases of the request), then the fewest open rooms
// in all, then, on a tie, the next host and the next instance in round
// robin. With every instance on one host, or none labelled, it is
// leastloaded with round-robin ties.
package colocate

import (
	"cmp"
	"context"
	"slices"
	"sync"

	"github.com/phased/phased/sdk"
)

// Name is the policy's name in configs, logs and errors.
const Name = "colocate"

// Version is the policy's own version.
const Version = "0.1.0"

// HostLabel is the candidate label that names the host an instance runs
// on; an instance without it, or with "", is on the supervisor's host.
const HostLabel = "host"

// Slack is how many more open rooms than the least-loaded ready instance
// of its phase an instance may hold and still be chosen to save a
// cross-host hop. Policies take no parameters (sdk.Policy has no
// Configure, and a Schedule call carries none), so it is a constant;
// NewSlack builds the policy with another value, for a binary of one's
// own.
//
// Why 1: the supervisor counts a room per hop end, so an instance of a
// middle phase (the transformer) holds two rooms per request, and one of
// the first or last phase one. One room of slack therefore never puts a
// request behind one more request on a middle phase, where a run is
// long (a hop is milliseconds, a denoising run seconds), and at most
// behind one more on the first or last phase, where it is short. 0
// keeps a request on one host only when that host is also the least
// loaded in every phase; 2 lets transformers queue a whole request more
// to save a hop, which in policies/hosts_test.go costs up to 23% more
// mean latency at 80% load (the policy's README has the figures).
const Slack = 1

// ErrNoReady is returned when a phase has no ready candidate.
var ErrNoReady = sdk.ErrNoReady

// Policy is the colocate policy; safe for concurrent use. Its only state
// is where the round robin that breaks ties stands: the host the last
// request started on, and per phase and host the index after the last
// instance chosen. Membership always comes from the ScheduleRequest, so
// the policy may be restarted or swapped at any time. The zero value is
// not usable: call New.
type Policy struct {
	slack int

	mu       sync.Mutex
	lastHost string            // host of the last request's first phase
	next     map[cursorKey]int // (phase, host) -> candidate index to start the next tie search from
}

type cursorKey struct{ phase, host string }

// maxCursors bounds the cursors kept, against hosts that come and go.
const maxCursors = 4096

// New returns the policy with the default Slack.
func New() *Policy { return NewSlack(Slack) }

// NewSlack returns the policy with slack open rooms of slack (see Slack);
// a negative slack counts as 0.
func NewSlack(slack int) *Policy {
	return &Policy{slack: max(slack, 0), next: make(map[cursorKey]int)}
}

// Info describes the policy.
func (p *Policy) Info(context.Context) (sdk.Info, error) {
	return sdk.PolicyInfo(Name, Version), nil
}

// Host returns the host a candidate runs on: its HostLabel, "" for the
// supervisor's own host.
func Host(c sdk.Candidate) string { return c.Labels[HostLabel] }

// score orders partial assignments: fewer cross-host hops first, then
// fewer open rooms in all.
type score struct{ hops, rooms int }

func (a score) less(b score) bool {
	if a.hops != b.hops {
		return a.hops < b.hops
	}
	return a.rooms < b.rooms
}

// Schedule chooses one ready candidate per phase of req, in the order of
// req.Phases (the pipeline's order), as the package comment says.
func (p *Policy) Schedule(_ context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	// EachPhase gathers the ready candidates and fails a phase without
	// one with the error every policy returns; the choice comes after,
	// once every phase is known.
	var ready [][]sdk.Candidate
	d, err := sdk.EachPhase(Name, req, func(_ string, r []sdk.Candidate) (sdk.Candidate, error) {
		ready = append(ready, r)
		return r[0], nil
	})
	if err != nil || len(ready) == 0 {
		return d, err
	}

	p.mu.Lock()
	defer p.mu.Unlock()

	hosts := p.hostOrder(ready)
	n, h := len(ready), len(hosts)
	// rooms[i][j]: the least open rooms among host j's ready candidates
	// of phase i; -1 when it has none or it is over the phase's slack.
	rooms := make([][]int, n)
	for i, r := range ready {
		least := slices.MinFunc(r, func(a, b sdk.Candidate) int { return cmp.Compare(a.OpenRooms, b.OpenRooms) }).OpenRooms
		rooms[i] = slices.Repeat([]int{-1}, h)
		for _, c := range r {
			j := slices.Index(hosts, Host(c))
			if c.OpenRooms <= least+p.slack && (rooms[i][j] < 0 || c.OpenRooms < rooms[i][j]) {
				rooms[i][j] = c.OpenRooms
			}
		}
	}

	// Best assignment of phases 0..i ending on host j (Viterbi over the
	// chain of phases): best[i][j] its score, from[i][j] the host of
	// phase i-1. Hosts are tried in round-robin order and only a strictly
	// better score replaces one, so ties go to the host next in turn.
	best := make([][]score, n)
	from := make([][]int, n)
	for i := range n {
		best[i], from[i] = make([]score, h), slices.Repeat([]int{-1}, h)
		for j := range h {
			if rooms[i][j] < 0 {
				continue
			}
			if i == 0 {
				best[i][j], from[i][j] = score{0, rooms[i][j]}, j
				continue
			}
			for k := range h {
				if from[i-1][k] < 0 {
					continue
				}
				s := best[i-1][k]
				if k != j {
					s.hops++
				}
				s.rooms += rooms[i][j]
				if from[i][j] < 0 || s.less(best[i][j]) {
					best[i][j], from[i][j] = s, k
				}
			}
		}
	}
	last := -1
	for j := range h {
		if from[n-1][j] >= 0 && (last < 0 || best[n-1][j].less(best[n-1][last])) {
			last = j
		}
	}
	on := make([]int, n) // host index of each phase's choice
	for i, j := n-1, last; i >= 0; i-- {
		on[i], j = j, from[i][j]
	}

	for i, ph := range req.Phases {
		d.Choices[ph.Phase] = p.pick(ph.Phase, hosts[on[i]], rooms[i][on[i]], ready[i]).ID
	}
	p.lastHost = hosts[on[0]]
	return d, nil
}

// hostOrder returns the hosts of the ready candidates, sorted by name and
// rotated to start after the host the last request started on. The
// caller holds mu.
func (p *Policy) hostOrder(ready [][]sdk.Candidate) []string {
	var hosts []string
	for _, r := range ready {
		for _, c := range r {
			hosts = append(hosts, Host(c))
		}
	}
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	k, found := slices.BinarySearch(hosts, p.lastHost)
	if found {
		k++
	}
	k %= len(hosts)
	return slices.Concat(hosts[k:], hosts[:k])
}

// pick returns, among the ready candidates on host with rooms open rooms,
// the first at or after the (phase, host) cursor in index order, wrapping
// around, and moves the cursor past it. The caller holds mu.
func (p *Policy) pick(phase, host string, rooms int, ready []sdk.Candidate) sdk.Candidate {
	key := cursorKey{phase, host}
	if _, ok := p.next[key]; !ok && len(p.next) >= maxCursors {
		clear(p.next) // hosts that came and went: only ties' turns are lost
	}
	cursor := p.next[key]
	var first, chosen *sdk.Candidate
	for i := range ready {
		c := &ready[i]
		if Host(*c) != host || c.OpenRooms != rooms {
			continue
		}
		if first == nil {
			first = c
		}
		if c.Index >= cursor {
			chosen = c
			break
		}
	}
	if chosen == nil {
		chosen = first
	}
	p.next[key] = chosen.Index + 1
	return *chosen
}

var _ sdk.Policy = (*Policy)(nil)

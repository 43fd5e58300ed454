package supervisor

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// phase is one phase of the pipeline and its instances.
type phase struct {
	cfg      config.Phase
	stage    int                    // its place in the pipeline, from 0
	path     string                 // its plugin binary
	live     atomic.Pointer[policy] // the policy that schedules it
	shadowOf atomic.Pointer[policy] // asked beside live, never used; nil: none
	stats    policyStats

	// members is its instances, in index order: a slice never changed
	// once stored, replaced whole by Scale (under scaleMu, which also
	// makes one scaling of the phase at a time).
	members atomic.Pointer[[]*instance]
	scaleMu sync.Mutex
	// remote is its instances on other hosts (remote.go), replaced
	// whole; every is members then remote, made again whenever either
	// changes (listMu orders those), since every scheduling decision
	// reads it. nextRemote numbers remote instances after every index
	// the phase may scale to.
	remote     atomic.Pointer[[]*instance]
	every      atomic.Pointer[[]*instance]
	listMu     sync.Mutex
	nextRemote atomic.Int64
	// load is what the scaler is told of it; stepsSeen the steps count
	// at the scaler's last call, for a rate.
	load      scalerLoad
	stepsSeen atomic.Int64
}

// all returns the phase's instances now: those on this host in index
// order, then those on other hosts.
func (ph *phase) all() []*instance {
	if e := ph.every.Load(); e != nil {
		return *e
	}
	return nil
}

// local returns the phase's instances on this host, in index order:
// those Scale counts.
func (ph *phase) local() []*instance {
	if m := ph.members.Load(); m != nil {
		return *m
	}
	return nil
}

// setMembers makes list the phase's instances on this host.
func (ph *phase) setMembers(list []*instance) {
	ph.listMu.Lock()
	defer ph.listMu.Unlock()
	ph.members.Store(&list)
	ph.joinLists()
}

// editRemote replaces the phase's instances on other hosts by what edit
// makes of them.
func (ph *phase) editRemote(edit func([]*instance) []*instance) {
	ph.listMu.Lock()
	defer ph.listMu.Unlock()
	var cur []*instance
	if r := ph.remote.Load(); r != nil {
		cur = *r
	}
	next := edit(slices.Clone(cur))
	ph.remote.Store(&next)
	ph.joinLists()
}

// joinLists makes every from members and remote; listMu is held.
func (ph *phase) joinLists() {
	every := ph.local()
	if r := ph.remote.Load(); r != nil && len(*r) > 0 {
		every = append(slices.Clone(every), *r...)
	}
	ph.every.Store(&every)
}

// candidates is the phase's snapshot for a policy: an instance that can
// take no more rooms (its credits, credit.go) is not ready in it.
func (ph *phase) candidates() sdk.PhaseCandidates { return ph.candidatesFor(true) }

// candidatesFor is candidates, where credit says whether an instance
// without credit counts as ready (false: a policy's trial, which places
// nothing).
func (ph *phase) candidatesFor(credit bool) sdk.PhaseCandidates {
	pc := sdk.PhaseCandidates{Phase: ph.cfg.Name}
	for _, in := range ph.all() {
		pc.Candidates = append(pc.Candidates, sdk.Candidate{
			ID:            in.id,
			Index:         in.index,
			Ready:         in.currentState() == stateReady && (!credit || in.hasCredit()),
			OpenRooms:     int(in.rooms.Load()),
			Inflight:      int(in.inflight.Load()),
			LatencyEWMAms: in.latencyMs(),
			Labels:        in.labels(),
		})
	}
	return pc
}

func (ph *phase) instance(id string) *instance {
	for _, in := range ph.all() {
		if in.id == id {
			return in
		}
	}
	return nil
}

// chosen returns the instance a policy chose for the phase, or an error if
// it is not a ready instance of the phase that can take a room.
func (ph *phase) chosen(policy, id string) (*instance, error) {
	in, err := ph.member(policy, id)
	if err == nil && !in.hasCredit() {
		return nil, fmt.Errorf("policy %s chose instance %s for phase %s, which can accept no more rooms (its credits, max_rooms %d)", policy, in.id, ph.cfg.Name, in.cfg.MaxRooms)
	}
	return in, err
}

// member is chosen without the credit check.
func (ph *phase) member(policy, id string) (*instance, error) {
	in := ph.instance(id)
	switch {
	case in == nil:
		return nil, fmt.Errorf("policy %s chose %q for phase %s, which is not one of its instances", policy, id, ph.cfg.Name)
	case in.currentState() != stateReady:
		return nil, fmt.Errorf("policy %s chose instance %s for phase %s, which is %s, not ready", policy, in.id, ph.cfg.Name, in.currentState())
	}
	return in, nil
}

// ErrUnknownPhase is returned for a phase name the pipeline does not have.
var ErrUnknownPhase = errors.New("no such phase")

func (s *Supervisor) phaseNamed(name string) (*phase, error) {
	for _, ph := range s.phases {
		if ph.cfg.Name == name {
			return ph, nil
		}
	}
	names := make([]string, len(s.phases))
	for i, ph := range s.phases {
		names[i] = ph.cfg.Name
	}
	return nil, fmt.Errorf("%w %q; the phases are: %s", ErrUnknownPhase, name, strings.Join(names, ", "))
}

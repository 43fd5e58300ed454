package supervisor

// Live scaling: a phase's instance count changed while requests run.
//
// Scale-out starts the new instances (index after the last) and lists
// them at once, starting; the policies see them ready only once their
// readiness call has returned. Scale-in retires the last instances, in
// order, each: draining (no new placement: the policies see it not
// ready), its requests given the release grace to finish, then their
// attempts ended and dispatched again elsewhere (free: not the
// request's fault), its spare rooms and the spares kept for it removed,
// sender sides first, then its process released like at release. The
// counts set are kept in the state directory, so that a supervisor
// started again starts as many.
//
// With a cluster block, the count is the phase's instances on every host:
// scale-out starts them on the hosts whose agents have room (--max), the
// roomiest first, then here if the phase runs here; scale-in retires
// those first, the newest first, then this host's; an agent's own
// instances (--serve) are never retired (remote.go). Only this host's
// count is kept in the state directory.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/transfer"
	"github.com/phased/phased/supervisor/config"
)

// scaleFile is the state directory's file of the counts Scale set.
const scaleFile = "scale.json"

// scaled is one phase's count as Scale set it, with the config's
// instances at the time: a config whose instances changed since wins.
type scaled struct {
	Instances int `json:"instances"`
	Config    int `json:"config_instances"`
}

// ScaleResult is what Scale did to a phase.
type ScaleResult struct {
	Phase string `json:"phase"`
	From  int    `json:"from"`
	To    int    `json:"to"`
	// Started and Retired are the instances it started and released.
	Started []string `json:"started,omitempty"`
	Retired []string `json:"retired,omitempty"`
}

// Scale sets a phase's instance count to n, from its min to its max,
// and returns once the new instances are ready or the retired ones
// released. One scaling of a phase at a time: a second one waits.
func (s *Supervisor) Scale(ctx context.Context, name string, n int) (ScaleResult, error) {
	if !s.pipeline.Load() {
		return ScaleResult{}, ErrReleasing
	}
	ph, err := s.phaseNamed(name)
	if err != nil {
		return ScaleResult{}, err
	}
	if n < ph.cfg.Min || n > ph.cfg.Max {
		return ScaleResult{}, fmt.Errorf("%w: phase %s scales from %d to %d instances (its min and max in the config), not to %d", ErrBadInput, name, ph.cfg.Min, ph.cfg.Max, n)
	}
	// Starts and drains end when the supervisor releases.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.bgCtx, cancel)()
	ph.scaleMu.Lock()
	defer ph.scaleMu.Unlock()
	if s.bgCtx.Err() != nil {
		return ScaleResult{}, ErrReleasing
	}
	cur := len(ph.all())
	res := ScaleResult{Phase: name, From: cur, To: n}
	switch {
	case s.cluster != nil && n > cur:
		err = s.scaleOutHosts(ctx, ph, n-cur, &res)
	case s.cluster != nil && n < cur:
		err = s.scaleInHosts(ctx, ph, cur-n, &res)
	case n > cur:
		err = s.scaleOut(ctx, ph, n, &res)
	case n < cur:
		err = s.scaleIn(ctx, ph, n, &res)
	}
	res.To = len(ph.all())
	if res.To != res.From {
		ph.load.lastScaled.Store(time.Now().UnixNano())
	}
	if serr := s.saveScale(ph, len(ph.local())); serr != nil {
		err = errors.Join(err, serr)
	}
	if err == nil && res.To != res.From {
		s.logger.Info("phase scaled", nonEmpty("phase", name, "from", res.From, "to", res.To, "started", res.Started, "retired", res.Retired)...)
	}
	return res, err
}

// scaleOut starts instances until the phase has n, each listed at once
// (starting) and ready once its readiness call returns; one that fails
// to start is taken off again, and the error says why.
func (s *Supervisor) scaleOut(ctx context.Context, ph *phase, n int, res *ScaleResult) error {
	cur := ph.local()
	var added []*instance
	for i := len(cur); i < n; i++ {
		added = append(added, s.newInstance(ph, i))
	}
	ph.setMembers(append(slices.Clone(cur), added...))
	s.readyChanged()
	errs := make([]error, len(added))
	lives := make([]*life, len(added))
	var wg sync.WaitGroup
	for k, in := range added {
		wg.Go(func() { lives[k], errs[k] = s.launch(ctx, in) })
	}
	wg.Wait()
	// Instances are numbered without a gap: the first that failed to
	// start takes the ones after it off too (launch killed its process).
	first := slices.IndexFunc(errs, func(err error) bool { return err != nil })
	if first < 0 {
		first = len(added)
	}
	for k, in := range added {
		if k < first {
			s.goLive(in, lives[k])
			res.Started = append(res.Started, in.id)
			continue
		}
		in.setState(stateReleased)
		if lives[k] != nil {
			_ = s.releaseLife(ctx, in, lives[k])
		}
		_ = os.RemoveAll(in.dir)
	}
	keep := added[:first]
	ph.setMembers(append(slices.Clone(cur), keep...))
	s.readyChanged()
	// Spares for and from the new instances: the phase before sends to
	// them, they send to the next.
	for _, in := range keep {
		s.fillSpare(in.cur.Load())
	}
	if ph.stage > 0 {
		for _, up := range s.phases[ph.stage-1].all() {
			s.fillSpare(up.cur.Load())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("phase %s: scale out: %w", ph.cfg.Name, err)
	}
	return nil
}

// scaleIn retires the phase's last instances until it has n: all of
// them draining at once, then each released in order once its requests
// are gone.
func (s *Supervisor) scaleIn(ctx context.Context, ph *phase, n int, res *ScaleResult) error {
	cur := ph.local()
	return s.retire(ctx, cur[n:], func() { ph.setMembers(slices.Clone(cur[:n])) }, res)
}

// retire retires victims, instances of one phase: all of them draining
// at once, then, once their requests are gone (or moved), unlisted
// (unlist takes them off their phase's list) and each released in order.
func (s *Supervisor) retire(ctx context.Context, victims []*instance, unlist func(), res *ScaleResult) error {
	for _, in := range victims {
		in.setState(stateDraining)
	}
	s.readyChanged()
	// The release grace for their requests to finish; then the attempts
	// left are ended (dispatched again elsewhere, spending no retry).
	grace := time.NewTimer(cmp.Or(s.cfg.Grace, config.DefaultGrace))
	defer grace.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	busy := func() bool {
		for _, in := range victims {
			if in.inflight.Load() > 0 {
				return true
			}
		}
		return false
	}
wait:
	for busy() {
		select {
		case <-grace.C:
			break wait
		case <-ctx.Done():
			break wait
		case <-s.bgCtx.Done():
			return ErrReleasing
		case <-tick.C:
		}
	}
	for _, in := range victims {
		if l := in.cur.Load(); l != nil {
			l.retire()
		}
	}
	for busy() {
		select {
		case <-s.bgCtx.Done():
			return ErrReleasing
		case <-tick.C:
		}
	}
	// No placement, and so no spare, goes to them any more.
	unlist()
	s.readyChanged()
	var errs []error
	for _, in := range victims {
		in.setState(stateReleased)
		s.dropSparesFor(in)
		if l := in.cur.Load(); l != nil {
			s.dropSpares(l)
			if err := s.releaseLife(ctx, in, l); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.RemoveAll(in.dir); err != nil {
			errs = append(errs, err)
		}
		res.Retired = append(res.Retired, in.id)
	}
	return errors.Join(errs...)
}

// retiring reports whether a scale-in is retiring in (or has).
func (in *instance) retiring() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.state == stateDraining || in.state == stateReleased
}

// retire ends the attempts that use l, an instance being scaled in:
// they are dispatched again elsewhere, and the loss spends no retry.
func (l *life) retire() {
	why := &InstanceError{Instance: l.in.id, PID: l.proc.pid, Status: "scaled in", Retired: true}
	for _, a := range l.usersNow() {
		a.cancel(why)
	}
}

// dropSparesFor removes the spares that the previous phase's instances
// keep for in, each sender side before the side standing by on in.
func (s *Supervisor) dropSparesFor(in *instance) {
	s.keptFor(in, func(up *life, sp *spareRoom) {
		up.mu.Lock()
		// One being opened is removed by its opener (in is retiring).
		open := up.spares[in] == sp && sp.endpoint != ""
		if open {
			delete(up.spares, in)
		}
		up.mu.Unlock()
		if !open {
			return
		}
		s.removeSpare(up, sp.id)
		if sp.standby != nil {
			s.removeSpare(sp.standby, sp.id)
		}
	})
}

// releaseLife releases an instance's process as release does: its
// Release call (bounded), then its process group killed and its
// segments swept.
func (s *Supervisor) releaseLife(ctx context.Context, in *instance, l *life) error {
	var errs []error
	if !l.proc.exited() {
		rctx, cancel := context.WithTimeout(ctx, releaseTimeout)
		err := l.ctl.Release(rctx)
		switch {
		case err != nil && (timedOut(rctx, err) || errors.Is(err, sdk.ErrPluginGone)):
			// It does not answer (stopped, stuck, gone): its process
			// group is killed below, which is its release.
			s.logger.Warn("instance did not release; killing it", "instance", in.id, "pid", l.proc.pid, "within", releaseTimeout, "error", err)
		case err != nil:
			errs = append(errs, fmt.Errorf("instance %s: release: %w", in.id, err))
		}
		cancel()
	}
	l.proc.kill()
	// An instance that died, or did not release in time, leaves its
	// segments behind: sweep them (its agent does on another host).
	if in.host != nil {
		return errors.Join(errs...)
	}
	if n, err := transfer.SweepSegments("", transfer.ProcessName(in.id, l.proc.pid)); err != nil {
		errs = append(errs, fmt.Errorf("instance %s: %w", in.id, err))
	} else if n > 0 {
		s.logger.Warn("removed shared-memory segments left by an instance", "instance", in.id, "count", n)
	}
	return errors.Join(errs...)
}

// loadScale reads the counts an earlier Scale kept in the state
// directory; nil without one. A file that cannot be read is reported
// and ignored: the config's counts are used.
func (s *Supervisor) loadScale() map[string]scaled {
	if s.opts.StateDir == "" {
		return nil
	}
	path := filepath.Join(s.opts.StateDir, scaleFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var counts map[string]scaled
	if err == nil {
		err = json.Unmarshal(b, &counts)
	}
	if err != nil {
		s.logger.Warn("the instance counts of earlier scalings are ignored: the config's are used", "file", path, "error", err)
		return nil
	}
	return counts
}

// startCount is how many instances phase p starts with: the count an
// earlier Scale set, within the config's min and max, unless the
// config's instances changed since; else the config's.
func (s *Supervisor) startCount(p config.Phase, counts map[string]scaled) int {
	c, ok := counts[p.Name]
	if !ok {
		return p.Instances
	}
	if c.Config != p.Instances {
		s.logger.Info("the config's instances changed since the phase was scaled: the config's count is used", "phase", p.Name, "scaled_to", c.Instances, "instances", p.Instances)
		return p.Instances
	}
	n := min(max(c.Instances, p.Min), p.Max)
	s.logger.Info("starting the instance count an earlier scale set", "phase", p.Name, "instances", n, "config_instances", p.Instances)
	return n
}

// saveScale keeps ph's count n in the state directory (written aside,
// synced, then renamed over the old file).
func (s *Supervisor) saveScale(ph *phase, n int) error {
	if s.opts.StateDir == "" {
		return nil
	}
	s.scaleFileMu.Lock()
	defer s.scaleFileMu.Unlock()
	counts := s.loadScale()
	if counts == nil {
		counts = map[string]scaled{}
	}
	counts[ph.cfg.Name] = scaled{Instances: n, Config: ph.cfg.Instances}
	b, err := json.MarshalIndent(counts, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(s.opts.StateDir, scaleFile)
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("keep the instance count: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("keep the instance count: %w", err)
	}
	return nil
}

// scaleOutHosts starts k more instances of a phase: on the hosts with
// room for them (their agents' capacity, --max), the roomiest first,
// then on this host if the phase runs here (instances > 0).
func (s *Supervisor) scaleOutHosts(ctx context.Context, ph *phase, k int, res *ScaleResult) error {
	for k > 0 {
		h := s.roomyHost(ph)
		if h == nil {
			break
		}
		in := s.newRemoteInstance(ph, h)
		in.scaled = true
		if err := s.launchRemote(ph, in); err != nil {
			return fmt.Errorf("phase %s: scale out: %w", ph.cfg.Name, err)
		}
		res.Started = append(res.Started, in.id)
		k--
	}
	if k == 0 {
		return nil
	}
	if local := len(ph.local()); ph.cfg.Instances > 0 && local+k <= ph.cfg.Max {
		return s.scaleOut(ctx, ph, local+k, res)
	}
	return fmt.Errorf("phase %s: scale out: no host has room for %d more instances: start an agent with --max %s=N, or give the phase instances on this host (instances > 0)", ph.cfg.Name, k, ph.cfg.Name)
}

// scaleInHosts retires k instances of a phase: those scaling started on
// hosts first, the newest first, then this host's last ones. The
// instances an agent offers (--serve) are its own: never retired.
func (s *Supervisor) scaleInHosts(ctx context.Context, ph *phase, k int, res *ScaleResult) error {
	var scaled []*instance
	if r := ph.remote.Load(); r != nil {
		for _, in := range *r {
			if in.scaled && !in.retiring() {
				scaled = append(scaled, in)
			}
		}
	}
	slices.SortFunc(scaled, func(a, b *instance) int { return b.index - a.index })
	victims := scaled[:min(k, len(scaled))]
	var errs []error
	if len(victims) > 0 {
		errs = append(errs, s.retire(ctx, victims, func() {
			ph.editRemote(func(list []*instance) []*instance {
				return slices.DeleteFunc(list, func(in *instance) bool { return slices.Contains(victims, in) })
			})
		}, res))
	}
	k -= len(victims)
	local := len(ph.local())
	if spare := local - min(local, ph.cfg.Instances); k > spare {
		floor := len(ph.all()) - len(victims) - spare
		errs = append(errs, fmt.Errorf("phase %s: scale in: %d of its instances are the agents' own (--serve) or this host's (instances = %d), which scaling does not retire; scale to at least %d", ph.cfg.Name, floor, ph.cfg.Instances, floor))
	} else if k > 0 {
		errs = append(errs, s.scaleIn(ctx, ph, local-k, res))
	}
	return errors.Join(errs...)
}

// floor is how few instances scaling can leave a phase of a cluster:
// the agents' own (--serve) and this host's config count.
func (s *Supervisor) floor(ph *phase) int {
	n := min(len(ph.local()), ph.cfg.Instances)
	if r := ph.remote.Load(); r != nil {
		for _, in := range *r {
			if !in.scaled {
				n++
			}
		}
	}
	return n
}

// roomyHost returns the joined host with the most room for another
// instance of a phase (ties: by name); nil when none has room.
func (s *Supervisor) roomyHost(ph *phase) *host {
	c := s.cluster
	c.mu.Lock()
	hosts := make([]*host, 0, len(c.hosts))
	for _, h := range c.hosts {
		if h.joined.Load() && !h.isLost() {
			hosts = append(hosts, h)
		}
	}
	c.mu.Unlock()
	slices.SortFunc(hosts, func(a, b *host) int { return strings.Compare(a.name, b.name) })
	var best *host
	most := 0
	for _, h := range hosts {
		if room := int(h.capacity[ph.cfg.Name]) - s.countOn(ph, h); room > most {
			best, most = h, room
		}
	}
	return best
}

// countOn counts a phase's instances on a host.
func (s *Supervisor) countOn(ph *phase, h *host) int {
	n := 0
	for _, in := range ph.all() {
		if in.host == h {
			n++
		}
	}
	return n
}

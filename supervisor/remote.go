package supervisor

// Instances on other hosts: the supervisor's side of `supervisor agent`
// (agent.go).
//
// A host joins when its agent is found (in etcd, membership.go, or
// listed in the config's cluster block): the supervisor dials it over
// mutual TLS, asks what it offers (Hello), opens a Watch stream of its
// session, and launches the instances it offers of each phase of the
// pipeline there, one Launch each, then configures and drives them through
// the same Phase calls as a local instance (sdk.RemotePhaseControl). To
// policies, scaling of the other phases, dispatch, ordered remove and
// release, a remote instance is an instance like any other; its process
// handle (remoteProc) stops it through its agent, and learns of its exit
// from the Watch stream.
//
// A host is lost when its agent's etcd registration goes (its lease
// expired: the agent died or was cut off) or its Watch stream cannot be
// opened again within the lease TTL: its instances are lost with it,
// their requests dispatched again elsewhere (free: not their fault), and
// they leave the pipeline. A host that comes back joins again with new
// instances. Hops between hosts use the zmq backend, encrypted with the
// cluster's CURVE key.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/transfer"
	"github.com/phased/phased/supervisor/agentv1"
	"github.com/phased/phased/supervisor/config"
	"github.com/phased/phased/supervisor/pki"
)

// cluster is the supervisor's hosts.
type cluster struct {
	cfg     *config.Cluster
	bundle  *pki.Bundle
	host    string // this host's label
	session string // this run of the supervisor, as agents know it

	joins atomic.Int64 // numbers the hosts' sessions

	mu    sync.Mutex
	hosts map[string]*host
	// silent holds the listed agents that did not answer, said once
	// until they do.
	silent map[string]bool
}

// host is one agent's host, from its join to its loss or the release.
type host struct {
	name, addr string
	lease      int64 // its etcd registration's lease; 0 for a listed agent
	// session is this join's session with its agent: a host that joins
	// again has a new one, so that what its last session left expires
	// there.
	session  string
	ttl      time.Duration
	conn     *grpc.ClientConn
	agent    agentv1.AgentClient
	zmqHost  string
	gpus     []string
	capacity map[string]int32 // the most instances of each phase it runs
	ctx      context.Context  // its joining and watching; ends when it is lost
	cancel   context.CancelFunc
	lostWhy  atomic.Pointer[string]
	joined   atomic.Bool // it answered Hello
	gpuTurn  atomic.Int64

	mu    sync.Mutex
	procs map[string]*remoteProc // by instance id
	seq   int64                  // numbers procs as they are made
}

// isLost reports whether the host was lost.
func (h *host) isLost() bool { return h.lostWhy.Load() != nil }

// remoteProc is the supervisor's handle of a plugin process an agent
// runs: done is closed when the agent reports its exit, when it is
// stopped, or when its host is lost.
type remoteProc struct {
	h    *host
	id   string
	seq  int64 // its place among the host's procs
	done chan struct{}
	once sync.Once

	mu     sync.Mutex
	status string
	lost   string
}

// ended records how the process ended and closes done; once.
func (r *remoteProc) ended(status, lost string) {
	r.once.Do(func() {
		r.mu.Lock()
		r.status, r.lost = status, lost
		r.mu.Unlock()
		r.h.mu.Lock()
		if r.h.procs[r.id] == r {
			delete(r.h.procs, r.id)
		}
		r.h.mu.Unlock()
		close(r.done)
	})
}

func (r *remoteProc) exitStatus() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.status == "" {
		return "unknown exit status"
	}
	return r.status
}

// stop has the agent stop the process (at once when now), unless it has
// ended or its host is lost; bounded.
func (r *remoteProc) stop(now bool) {
	select {
	case <-r.done:
		return // the agent cleaned up after it
	default:
	}
	if why := r.h.lostWhy.Load(); why != nil {
		r.ended("host lost", *why)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), killWait+5*time.Second)
	defer cancel()
	resp, err := r.h.agent.Stop(ctx, &agentv1.StopRequest{Instance: r.id, Session: r.h.session, Now: now})
	if err != nil {
		// Its agent, if it lives, stops it when this session expires.
		r.ended("stop through agent "+r.h.name+" failed: "+status.Convert(err).Message(), "")
		return
	}
	r.ended(resp.GetStatus(), "")
}

// lost says why the process's host was lost; "" for a process of this
// host, or one that ended otherwise.
func (p *process) lost() string {
	if p.remote == nil {
		return ""
	}
	p.remote.mu.Lock()
	defer p.remote.mu.Unlock()
	return p.remote.lost
}

// hostName is the host an instance runs on; "" for this one.
func (in *instance) hostName() string {
	if in.host != nil {
		return in.host.name
	}
	return ""
}

// HostLabel and GPULabel are the labels that say where an instance runs,
// given to policies with every candidate of a supervisor with a cluster
// block (the host of an instance on the supervisor's own is the
// supervisor's host label).
const (
	HostLabel = "host"
	GPULabel  = "gpu"
)

// labels are what the policies see of an instance: its phase's labels
// and, in a cluster, its host and GPU. They do not change: made once,
// not at every scheduling decision, and never written to after.
func (in *instance) labels() map[string]string {
	in.labelsOnce.Do(func() {
		m := in.cfg.InstanceLabels(in.index)
		if in.clusterHost != "" {
			if m == nil {
				m = map[string]string{}
			}
			m[HostLabel] = in.clusterHost
			if in.gpu != "" {
				m[GPULabel] = in.gpu
			}
		}
		in.labelSet = m
	})
	return in.labelSet
}

// zmqHost is where an instance's zmq rooms bind: for an instance on
// another host, its agent says; else its phase's address, else the
// cluster's address of this host, else loopback.
func (s *Supervisor) zmqHost(in *instance) string {
	switch {
	case in.host != nil:
		return ""
	case in.cfg.Address != "":
		return in.cfg.Address
	case s.cluster != nil:
		return s.cluster.cfg.Address
	}
	return ""
}

// startCluster loads the cluster's credentials; the hosts join later
// (joinCluster), once the pipeline runs.
func (s *Supervisor) startCluster() error {
	cc := s.cfg.Cluster
	if cc == nil {
		return nil
	}
	b, err := pki.LoadBundle(cc.TLSDir)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if b.Role != pki.RoleSupervisor {
		return fmt.Errorf("cluster: the bundle in %s (%s) is an %s's: issue the supervisor's with `supervisor tls issue %s --role supervisor`", cc.TLSDir, cc.At, b.Role, b.Host)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	s.cluster = &cluster{cfg: cc, bundle: b, host: b.Host, session: "s" + hex.EncodeToString(id[:]), hosts: map[string]*host{}, silent: map[string]bool{}}
	if cc.Host != "" {
		s.cluster.host = cc.Host
	}
	return nil
}

// joinCluster has the listed agents join, and watches etcd for the
// others.
func (s *Supervisor) joinCluster() {
	c := s.cluster
	if c == nil {
		return
	}
	for _, a := range c.cfg.Agents {
		s.hostSeen(a.Host, a.Address, 0)
	}
	if len(c.cfg.Etcd) > 0 {
		s.background(s.watchMembers)
	}
}

// hostSeen handles an agent found at addr: a new host joins; a known one
// registered under another lease has restarted (its instances died with
// it): it is lost and joins again.
func (s *Supervisor) hostSeen(name, addr string, lease int64) {
	c := s.cluster
	c.mu.Lock()
	old := c.hosts[name]
	c.mu.Unlock()
	if old != nil {
		if old.addr == addr && old.lease == lease && !old.isLost() {
			return
		}
		s.hostGone(old, "its agent registered again (it restarted, or moved)")
	}
	h := &host{name: name, addr: addr, lease: lease, ttl: c.cfg.LeaseTTL, procs: map[string]*remoteProc{},
		session: fmt.Sprintf("%s-%d", c.session, c.joins.Add(1))}
	// The connection is made on its first call.
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(c.bundle.ClientTLS(name))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: h.ttl, PermitWithoutStream: true}),
	)
	if err != nil {
		s.logger.Error("an agent's address cannot be dialled; ignored", "host", name, "address", addr, "error", err)
		return
	}
	h.conn, h.agent = conn, agentv1.NewAgentClient(conn)
	h.ctx, h.cancel = context.WithCancel(s.bgCtx)
	c.mu.Lock()
	if c.hosts[name] != nil && c.hosts[name] != old {
		c.mu.Unlock()
		h.cancel()
		_ = conn.Close()
		return // another sighting won
	}
	c.hosts[name] = h
	c.mu.Unlock()
	if !s.background(func() { s.joinHost(h) }) {
		h.cancel()
		_ = conn.Close()
	}
}

// hostGone takes a host for lost, for why: its instances are lost with
// it (their watchers fail their requests' attempts and drop them), and
// its connection is closed, which ends every call still waiting on it.
func (s *Supervisor) hostGone(h *host, why string) {
	if !h.lostWhy.CompareAndSwap(nil, &why) {
		return
	}
	c := s.cluster
	c.mu.Lock()
	if c.hosts[h.name] == h {
		delete(c.hosts, h.name)
	}
	c.mu.Unlock()
	h.cancel()
	h.mu.Lock()
	procs := make([]*remoteProc, 0, len(h.procs))
	for _, p := range h.procs {
		procs = append(procs, p)
	}
	h.mu.Unlock()
	if h.joined.Load() {
		s.logger.Error("host lost: its instances are lost, their requests dispatched again", "host", h.name, "why", why, "instances", len(procs))
	} else {
		s.logger.Debug("host not joined", "host", h.name, "why", why)
	}
	for _, p := range procs {
		p.ended("host lost", why)
	}
	// Those without a live process (starting again) go now.
	for _, ph := range s.phases {
		for _, in := range ph.all() {
			if in.host == h && in.cur.Load() == nil {
				s.dropRemote(in)
			}
		}
	}
	_ = h.conn.Close()
	s.readyChanged()
	// A listed agent is tried again until it answers; one in etcd joins
	// again when it registers again.
	if h.lease == 0 {
		s.background(func() {
			select {
			case <-s.bgCtx.Done():
			case <-time.After(time.Second):
				s.hostSeen(h.name, h.addr, 0)
			}
		})
	}
}

// dropRemote takes an instance of a lost host out of the pipeline.
func (s *Supervisor) dropRemote(in *instance) {
	in.setState(stateReleased)
	s.phases[in.stage].editRemote(func(list []*instance) []*instance {
		return slices.DeleteFunc(list, func(x *instance) bool { return x == in })
	})
	s.dropSparesFor(in)
	s.readyChanged()
}

// joinHost dials a host's agent, asks what it offers, watches its
// session, and launches the instances it offers.
func (s *Supervisor) joinHost(h *host) {
	c := s.cluster
	// The agent may be starting: try again until the lease TTL is over.
	var hello *agentv1.HelloResponse
	var err error
	deadline := time.Now().Add(max(h.ttl, 5*time.Second))
	for {
		hctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
		hello, err = h.agent.Hello(hctx, &agentv1.HelloRequest{})
		cancel()
		if err == nil || h.ctx.Err() != nil {
			break
		}
		if time.Now().After(deadline) {
			why := fmt.Sprintf("its agent at %s does not answer: %v", h.addr, err)
			c.mu.Lock()
			said := c.silent[h.name]
			c.silent[h.name] = true
			c.mu.Unlock()
			if !said {
				s.logger.Warn("an agent does not answer; trying again", "host", h.name, "why", why)
			}
			s.hostGone(h, why)
			return
		}
		select {
		case <-h.ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	if h.ctx.Err() != nil {
		return
	}
	if hello.GetHost() != h.name {
		s.hostGone(h, fmt.Sprintf("the agent at %s says it is host %q", h.addr, hello.GetHost()))
		return
	}
	h.zmqHost, h.gpus, h.capacity = hello.GetZmqHost(), hello.GetGpus(), hello.GetCapacity()
	h.joined.Store(true)
	c.mu.Lock()
	delete(c.silent, h.name)
	c.mu.Unlock()
	s.logger.Info("host joined", "host", h.name, "address", h.addr, "offers", hello.GetOffers(), "gpus", h.gpus, "version", hello.GetVersion())
	s.background(func() { s.watchHost(h) })
	for name := range hello.GetOffers() {
		if _, err := s.phaseNamed(name); err != nil {
			s.logger.Warn("a host offers a phase the pipeline does not have; ignored", "host", h.name, "phase", name)
		}
	}
	var wg sync.WaitGroup
	for _, ph := range s.phases {
		// An agent's word is bounded by its capacity and phased's.
		n := min(int(hello.GetOffers()[ph.cfg.Name]), config.MaxInstances)
		if c, ok := h.capacity[ph.cfg.Name]; ok {
			n = min(n, int(c))
		}
		for range max(n, 0) {
			wg.Go(func() { s.offered(ph, h) })
		}
	}
	wg.Wait()
}

// offered starts an instance a host offers. The agent may still run
// what an earlier session of the host left (until that session expires,
// after its lease TTL), which takes its room: it is tried again until
// then.
func (s *Supervisor) offered(ph *phase, h *host) {
	deadline := time.Now().Add(3*h.ttl + 5*time.Second)
	for {
		in := s.newRemoteInstance(ph, h)
		err := s.launchRemote(ph, in)
		if err == nil || h.isLost() || s.bgCtx.Err() != nil {
			return
		}
		code := status.Code(err)
		if (code != codes.ResourceExhausted && code != codes.AlreadyExists) || time.Now().After(deadline) {
			s.logger.Error("start a phase instance on a host", "instance", in.id, "host", h.name, "error", err)
			return
		}
		select {
		case <-h.ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// newRemoteInstance makes an instance of a phase on a host, starting,
// listed in the phase at once (the policies see it ready once it is).
func (s *Supervisor) newRemoteInstance(ph *phase, h *host) *instance {
	i := ph.cfg.Max + int(ph.nextRemote.Add(1)) - 1
	in := s.newInstance(ph, i)
	in.dir, in.host = "", h
	if ph.cfg.Device == sdk.DeviceCUDA && len(h.gpus) > 0 {
		// In turn over the host's GPUs, whatever the phase.
		in.gpu = h.gpus[int(h.gpuTurn.Add(1)-1)%len(h.gpus)]
	}
	in.clusterHost = h.name
	ph.editRemote(func(list []*instance) []*instance { return append(list, in) })
	s.readyChanged()
	return in
}

// launchRemote starts a remote instance's process and makes it live; one
// that fails to start is taken out again, and the error says why.
func (s *Supervisor) launchRemote(ph *phase, in *instance) error {
	l, err := s.launch(in.host.ctx, in)
	if err == nil && (in.host.isLost() || s.bgCtx.Err() != nil) {
		l.proc.kill()
		err = fmt.Errorf("instance %s: its host %s was lost, or the supervisor releases", in.id, in.host.name)
	}
	if err != nil {
		s.dropRemote(in)
		return err
	}
	s.goLive(in, l)
	s.fillSpare(l)
	if ph.stage > 0 {
		for _, up := range s.phases[ph.stage-1].all() {
			s.fillSpare(up.cur.Load())
		}
	}
	s.logger.Info("phase instance started on a host", "instance", in.id, "host", in.host.name, "pid", l.proc.pid)
	return nil
}

// hostsMayServe reports whether, in a cluster, a host may yet give a
// phase an instance: the phase runs on hosts only, or a host not joined
// yet or with room for it is there. Requests then wait for one.
func (s *Supervisor) hostsMayServe(ph *phase) bool {
	c := s.cluster
	if c == nil {
		return false
	}
	if ph.cfg.Instances == 0 {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.hosts {
		if !h.joined.Load() || h.capacity[ph.cfg.Name] > 0 {
			return true
		}
	}
	return false
}

// startRemote has an instance's agent start its process, and returns its
// handle.
func (s *Supervisor) startRemote(ctx context.Context, in *instance, pc processConfig) (*process, error) {
	h := in.host
	if why := h.lostWhy.Load(); why != nil {
		return nil, fmt.Errorf("instance %s: host %s was lost: %s", in.id, h.name, *why)
	}
	pin, _ := pinOf(s.cfg, pc.Path)
	lctx, cancel := context.WithTimeout(ctx, pc.StartTimeout+5*time.Second)
	defer cancel()
	resp, err := h.agent.Launch(lctx, &agentv1.LaunchRequest{
		Session: h.session, Instance: in.id, Plugin: in.cfg.Plugin, Pin: pin,
		StartTimeoutMs: pc.StartTimeout.Milliseconds(), LogLevel: s.opts.LogLevel,
		Cpus: int32(in.cfg.CPUs), Phase: in.phase, Gpu: in.gpu,
	})
	if err != nil {
		// It may have started all the same (an answer lost, a deadline
		// passed meanwhile): stop it, or its session's expiry will.
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = h.agent.Stop(sctx, &agentv1.StopRequest{Instance: in.id, Session: h.session, Now: true})
		scancel()
		return nil, fmt.Errorf("instance %s on host %s: launch: %w", in.id, h.name, launchError{err})
	}
	rp := &remoteProc{h: h, id: in.id, done: make(chan struct{})}
	h.mu.Lock()
	h.seq++
	rp.seq = h.seq
	h.procs[in.id] = rp
	h.mu.Unlock()
	ctl := sdk.RemotePhaseControl(h.conn, h.session+"/"+in.id)
	p := &process{name: in.id, path: h.name + ":" + pc.Path, pid: int(resp.GetPid()), raw: ctl, done: rp.done, remote: rp,
		stderr: newPluginLog(s.logger.Named(in.id))}
	ictx, icancel := context.WithTimeout(ctx, pc.StartTimeout)
	defer icancel()
	if p.info, err = ctl.Info(ictx); err != nil {
		rp.stop(true)
		return nil, fmt.Errorf("instance %s on host %s: info: %w", in.id, h.name, err)
	}
	return p, nil
}

// watchHost keeps the host's Watch stream open, and hands each exit it
// reports to the instance's process handle. A stream that cannot be
// opened again within the lease TTL loses the host. Each stream's
// header lists the session's instances the agent runs: one launched
// before the stream was asked for and not listed is gone (the agent
// restarted, or stopped it).
func (s *Supervisor) watchHost(h *host) {
	broke := time.Time{}
	for {
		h.mu.Lock()
		before := h.seq
		h.mu.Unlock()
		stream, err := h.agent.Watch(h.ctx, &agentv1.WatchRequest{Session: h.session})
		if err == nil {
			var md metadata.MD
			if md, err = stream.Header(); err == nil {
				broke = time.Time{}
				s.reconcile(h, before, md.Get(LiveMetadata))
			}
		}
		for err == nil {
			var e *agentv1.Exit
			if e, err = stream.Recv(); err == nil {
				broke = time.Time{}
				h.mu.Lock()
				rp := h.procs[e.GetInstance()]
				h.mu.Unlock()
				if rp != nil {
					s.logger.Error("phase instance on a host exited", nonEmpty("instance", e.GetInstance(), "host", h.name, "status", e.GetStatus(), "stderr", e.GetStderr())...)
					rp.ended(e.GetStatus(), "")
				}
			}
		}
		if h.ctx.Err() != nil {
			return
		}
		if broke.IsZero() {
			broke = time.Now()
			s.logger.Warn("lost the watch of a host; opening it again", "host", h.name, "error", err)
		}
		if time.Since(broke) > h.ttl {
			s.hostGone(h, fmt.Sprintf("its agent at %s has been unreachable for %s (lease_ttl): %v", h.addr, h.ttl, err))
			return
		}
		select {
		case <-h.ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// reconcile ends the handles of the host's processes that were launched
// before a Watch stream opened (seq up to before) and that its header
// does not list as live.
func (s *Supervisor) reconcile(h *host, before int64, live []string) {
	alive := map[string]bool{}
	for _, v := range live {
		for _, id := range strings.Split(v, ",") {
			alive[id] = true
		}
	}
	h.mu.Lock()
	var gone []*remoteProc
	for id, rp := range h.procs {
		if rp.seq <= before && !alive[id] {
			gone = append(gone, rp)
		}
	}
	h.mu.Unlock()
	for _, rp := range gone {
		s.logger.Error("phase instance on a host is gone: its agent no longer runs it", "instance", rp.id, "host", h.name)
		rp.ended("gone from its agent (the agent restarted, or stopped it)", "")
	}
}

// launchError is a Launch's gRPC error, said by its message alone.
type launchError struct{ err error }

func (e launchError) Error() string { return status.Convert(e.err).Message() }
func (e launchError) Unwrap() error { return e.err }

// stopCluster closes the hosts' connections; release has released their
// instances.
func (s *Supervisor) stopCluster() {
	c := s.cluster
	if c == nil {
		return
	}
	c.mu.Lock()
	hosts := make([]*host, 0, len(c.hosts))
	for _, h := range c.hosts {
		hosts = append(hosts, h)
	}
	c.hosts = map[string]*host{}
	c.mu.Unlock()
	for _, h := range hosts {
		h.cancel()
		_ = h.conn.Close()
	}
}

// curveEnv is the environment that gives a local plugin the cluster's
// CURVE key; nil without a cluster.
func (s *Supervisor) curveEnv() []string {
	if s.cluster == nil {
		return nil
	}
	return []string{transfer.CurveKeyFileEnv + "=" + s.cluster.bundle.CurveFile}
}

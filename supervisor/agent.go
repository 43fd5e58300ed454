package supervisor

// The agent: `supervisor agent` on a host other than the supervisor's.
//
// It starts that host's phase plugins as go-plugin children exactly as
// the supervisor starts its own (startProcess: pins, process groups,
// parent-death signal, stale cleanup, the Info check), and serves them to
// a remote supervisor over TCP with mutual TLS: the Agent service
// (supervisor/agentv1) to launch, stop and watch them, and beside it the
// Phase service of every instance, each call passed to the process of the
// instance its metadata names (sdk.InstanceOf). The supervisor configures
// and drives a remote instance through the same Phase calls as a local
// one. The agent registers itself and its instances in etcd under a lease
// (membership.go), or is listed in the supervisor's config.
//
// What the agent runs is owned by a supervisor's session: the instances
// a session launched are stopped when none of its Watch streams has been
// open for the lease TTL (the supervisor died, or the link to it is cut),
// and all of them when the agent's lease is lost (etcd has told the
// supervisor they are lost: they must not keep working) or the agent
// stops.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
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

// AgentConfig configures an agent.
type AgentConfig struct {
	// Host is the host's label, as policies and status show it; it must
	// be the name its TLS certificate was issued for (`supervisor tls
	// issue HOST`), which supervisors check.
	Host string
	// Listen is HOST:PORT the agent serves on; Advertise is HOST:PORT
	// supervisors dial ("" is Listen).
	Listen, Advertise string
	// ZMQHost is the address its instances' zmq rooms bind to, on the
	// network between the hosts; "" is the host part of Advertise.
	ZMQHost string
	// TLSDir holds its bundle: ca.pem, cert.pem, key.pem, curve.key.
	TLSDir string
	// PluginDir holds the phase plugins (phased-phase-NAME).
	PluginDir string
	// Etcd lists etcd's endpoints; none: supervisors list the agent in
	// their config instead.
	Etcd []string
	// Prefix is the etcd key prefix (DefaultEtcdPrefix).
	Prefix string
	// LeaseTTL is its etcd lease's TTL, and how long a supervisor's
	// session outlives its last Watch stream (DefaultLeaseTTL).
	LeaseTTL time.Duration
	// GPUs is the host's GPU inventory (ordinals), as registered.
	GPUs []string
	// Offers says how many instances of each phase this host runs for
	// a supervisor that finds it; Max, how many it runs at most (room
	// that scaling may use; Offers where Max is lower or unset).
	Offers, Max map[string]int
	// Health, if set, is HOST:PORT to serve /healthz and /readyz on,
	// plain HTTP, for probes (Kubernetes): healthy while it serves,
	// ready once registered in etcd (at once without etcd).
	Health string
	// LogLevel is given to the plugins.
	LogLevel string
	Logger   hclog.Logger
}

// Defaults of AgentConfig and the config's cluster block.
const (
	DefaultEtcdPrefix = "/phased"
	DefaultLeaseTTL   = 10 * time.Second
)

// check checks the config and fills in its defaults.
func (c *AgentConfig) check() error {
	var errs []error
	if c.Host == "" {
		c.Host, _ = os.Hostname()
	}
	if !config.HostLabelRE.MatchString(c.Host) {
		errs = append(errs, fmt.Errorf("host %q: expected 1 to 63 letters, digits, '.', '_' or '-'", c.Host))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen %q: expected HOST:PORT, e.g. 10.0.0.2:7443", c.Listen))
	}
	if c.Advertise == "" {
		c.Advertise = c.Listen
	}
	h, p, err := net.SplitHostPort(c.Advertise)
	if err != nil || h == "" || !config.DialPort(p) || net.ParseIP(h) != nil && net.ParseIP(h).IsUnspecified() {
		errs = append(errs, fmt.Errorf("advertise %q: expected HOST:PORT that supervisors can dial: no wildcard, no port 0", c.Advertise))
	}
	if c.ZMQHost == "" {
		c.ZMQHost = h
		if strings.Contains(h, ":") { // IPv6
			c.ZMQHost = "[" + h + "]"
		}
	}
	if err := transfer.CheckHost(c.ZMQHost); err != nil {
		errs = append(errs, fmt.Errorf("zmq host %q: %w", c.ZMQHost, err))
	}
	if c.Health != "" {
		if _, _, err := net.SplitHostPort(c.Health); err != nil {
			errs = append(errs, fmt.Errorf("health %q: expected HOST:PORT", c.Health))
		}
	}
	if c.TLSDir == "" {
		errs = append(errs, errors.New("tls dir: required (a bundle from `supervisor tls issue HOST`)"))
	}
	if c.Prefix == "" {
		c.Prefix = DefaultEtcdPrefix
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.LeaseTTL < time.Second || c.LeaseTTL%time.Second != 0 {
		errs = append(errs, fmt.Errorf("lease ttl %s: expected whole seconds, 1s or more", c.LeaseTTL))
	}
	for name, n := range c.Offers {
		if n < 0 || n > 64 {
			errs = append(errs, fmt.Errorf("serve %s=%d: expected 0 to 64 instances", name, n))
		}
	}
	for name, n := range c.Max {
		if n < 0 || n > 64 {
			errs = append(errs, fmt.Errorf("max %s=%d: expected 0 to 64 instances", name, n))
		}
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return errors.Join(errs...)
}

// Agent serves a host's phase instances to remote supervisors.
type Agent struct {
	cfg    AgentConfig
	logger hclog.Logger
	bundle *pki.Bundle
	runDir string
	srv    *grpc.Server
	reg    *registry // etcd; nil without

	mu        sync.Mutex
	instances map[string]*agentInstance
	launching map[string]string // ids being launched: their phase
	launches  atomic.Int64      // numbers their run directories
	sessions  map[string]*agentSession
	closed    bool
	done      chan struct{} // closed by Close
	wg        sync.WaitGroup
}

// agentInstance is one plugin process the agent runs.
type agentInstance struct {
	id, phase, session, dir string
	key                     string // session/id: the Phase calls' instance (two sessions may both have an id)
	proc                    *process
	ctl                     sdk.PhaseControl
	stopped                 atomic.Bool // by Stop or the agent: its exit is not reported
	cleanup                 sync.Once
	status                  string // how it ended, once cleaned up
}

// agentSession is a supervisor's run, as the agent knows it: its Watch
// streams and the exits they have yet to send.
type agentSession struct {
	id       string
	watchers int
	exits    []*agentv1.Exit
	wake     chan struct{} // closed, and replaced, when an exit is queued
	expiry   *time.Timer   // runs LeaseTTL after its last Watch ended
}

// NewAgent checks cfg and makes an agent; it starts nothing.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return &Agent{cfg: cfg, logger: cfg.Logger, instances: map[string]*agentInstance{}, launching: map[string]string{}, sessions: map[string]*agentSession{}, done: make(chan struct{})}, nil
}

// Run serves until ctx ends, then stops every instance and returns. The
// listener is bound before Run returns an error about it.
func (a *Agent) Run(ctx context.Context) error {
	b, err := pki.LoadBundle(a.cfg.TLSDir)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if b.Host != a.cfg.Host {
		return fmt.Errorf("agent: the certificate in %s is issued for host %q, not %q: run `supervisor tls issue %s`, or start the agent with --host %s", a.cfg.TLSDir, b.Host, a.cfg.Host, a.cfg.Host, b.Host)
	}
	if b.Role != pki.RoleAgent {
		return fmt.Errorf("agent: the bundle in %s is a %s's: issue this host one with `supervisor tls issue %s` (role agent)", a.cfg.TLSDir, b.Role, a.cfg.Host)
	}
	a.bundle = b
	if err := sweepStale(a.logger, ""); err != nil {
		a.logger.Warn("cleaning up after a supervisor or agent that did not stop", "error", err)
	}
	if a.runDir, err = newRunDir(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer os.RemoveAll(a.runDir)
	if err := writePIDFile(a.runDir, true); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	// The registry before anything is served: Launch reads a.reg.
	if len(a.cfg.Etcd) > 0 {
		if a.reg, err = newRegistry(a.cfg, a.logger.Named("etcd"), a.lostLease); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		if a.reg != nil {
			_ = a.reg.close()
			a.reg = nil
		}
		return fmt.Errorf("agent: %w", err)
	}
	a.srv = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(b.ServerTLS())),
		// A supervisor's streams stay open for hours: pings find a
		// link that died without a FIN.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: a.cfg.LeaseTTL / 2, Timeout: a.cfg.LeaseTTL / 2}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
	)
	agentv1.RegisterAgentServer(a.srv, agentService{a: a})
	sdk.RegisterPhaseService(a.srv, agentRouter{a: a})
	served := make(chan error, 1)
	go func() { served <- a.srv.Serve(ln) }()
	a.logger.Info("agent serving", "host", a.cfg.Host, "listen", ln.Addr().String(), "advertise", a.cfg.Advertise,
		"zmq_host", a.cfg.ZMQHost, "offers", a.cfg.Offers, "run_dir", a.runDir)
	var regErr <-chan error
	if a.reg != nil {
		regErr = a.reg.run(a.info())
	}
	if a.cfg.Health != "" {
		stop, err := a.serveHealth()
		if err != nil {
			return errors.Join(fmt.Errorf("agent: health: %w", err), a.Close())
		}
		defer stop()
	}
	select {
	case <-ctx.Done():
		err = nil
	case err = <-served:
		err = fmt.Errorf("agent: serve: %w", err)
	case err = <-regErr:
		err = fmt.Errorf("agent: etcd: %w", err)
	}
	return errors.Join(err, a.Close())
}

// Close stops serving, stops every instance and leaves etcd. Safe to call
// twice.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.done)
	srv := a.srv
	all := a.list(func(*agentInstance) bool { return true })
	for _, s := range a.sessions {
		if s.expiry != nil {
			s.expiry.Stop()
		}
	}
	a.mu.Unlock()
	// Streams end at done; calls in flight get a moment. (Nothing is
	// served before Run got as far.)
	if srv != nil {
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			srv.Stop()
			<-stopped
		}
	}
	a.stopAll(all, "the agent stopped")
	a.wg.Wait()
	var err error
	if a.reg != nil {
		err = a.reg.close()
	}
	a.logger.Info("agent stopped", "host", a.cfg.Host)
	return err
}

// info is what the agent registers in etcd and says to Hello.
func (a *Agent) info() agentRecord {
	return agentRecord{Host: a.cfg.Host, Address: a.cfg.Advertise, ZMQHost: a.cfg.ZMQHost, GPUs: a.cfg.GPUs, Offers: a.cfg.Offers,
		Capacity: a.capacity(), LeaseTTLms: a.cfg.LeaseTTL.Milliseconds()}
}

// capacity is the most instances of each phase the agent runs: its
// offers, or its max where higher.
func (a *Agent) capacity() map[string]int {
	c := maps.Clone(a.cfg.Offers)
	if c == nil {
		c = map[string]int{}
	}
	for name, n := range a.cfg.Max {
		c[name] = max(c[name], n)
	}
	return c
}

// list returns the instances that keep says; a.mu is held.
func (a *Agent) list(keep func(*agentInstance) bool) []*agentInstance {
	var out []*agentInstance
	for _, in := range a.instances {
		if keep(in) {
			out = append(out, in)
		}
	}
	return out
}

// stopAll stops instances by force, at once, for why.
func (a *Agent) stopAll(list []*agentInstance, why string) {
	if len(list) > 0 {
		a.logger.Warn("stopping instances", "count", len(list), "why", why)
	}
	var wg sync.WaitGroup
	for _, in := range list {
		wg.Go(func() { a.stop(in, true, why) })
	}
	wg.Wait()
}

// lostLease is called when the agent's etcd lease is lost: supervisors
// take its instances for lost and retry their requests elsewhere, so
// they must not keep working.
func (a *Agent) lostLease() {
	a.mu.Lock()
	all := a.list(func(*agentInstance) bool { return true })
	a.mu.Unlock()
	a.stopAll(all, "the agent's etcd lease was lost")
}

// stop stops an instance (gracefully unless now) and cleans up after
// it; it returns how it ended. why, when the agent stops it on its own,
// is reported to its session as its exit.
func (a *Agent) stop(in *agentInstance, now bool, why string) string {
	in.stopped.Store(true)
	if now {
		in.proc.killNow()
	} else {
		in.proc.kill()
	}
	<-in.proc.done
	a.cleanup(in)
	if why != "" {
		a.report(in, "stopped by the agent: "+why, "")
	}
	return in.status
}

// report queues an instance's exit for its session's Watch streams.
func (a *Agent) report(in *agentInstance, status, stderr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s := a.sessions[in.session]; s != nil {
		s.exits = append(s.exits, &agentv1.Exit{Instance: in.id, Pid: int64(in.proc.pid), Status: status, Stderr: stderr})
		close(s.wake)
		s.wake = make(chan struct{})
	}
}

// cleanup removes what an exited instance leaves: its process group,
// segments, run directory, registry key; once.
func (a *Agent) cleanup(in *agentInstance) {
	in.cleanup.Do(func() {
		in.proc.kill() // its group and go-plugin's state; at once, it exited
		in.status = in.proc.exitStatus()
		if n, err := transfer.SweepSegments("", transfer.ProcessName(in.id, in.proc.pid)); err != nil {
			a.logger.Warn("sweep segments of an exited instance", "instance", in.id, "error", err)
		} else if n > 0 {
			a.logger.Info("removed shared-memory segments of an exited instance", "instance", in.id, "count", n)
		}
		if err := os.RemoveAll(in.dir); err != nil {
			a.logger.Warn("remove an instance's run directory", "instance", in.id, "error", err)
		}
		a.mu.Lock()
		if a.instances[in.key] == in {
			delete(a.instances, in.key)
		}
		a.mu.Unlock()
		if a.reg != nil {
			a.reg.removeInstance(in.session + "." + in.id)
		}
	})
}

// watchInstance waits for an instance's exit and reports it to its
// session, unless it was stopped.
func (a *Agent) watchInstance(in *agentInstance) {
	select {
	case <-in.proc.done:
	case <-a.done:
		return // Close stops it
	}
	if in.stopped.Load() {
		return
	}
	a.logger.Error("phase instance exited", "instance", in.id, "pid", in.proc.pid, "status", in.proc.exitStatus())
	stderr := in.proc.stderr.String()
	a.cleanup(in)
	a.report(in, in.status, stderr)
}

// session returns a session, made if new; a.mu is held.
func (a *Agent) session(id string) *agentSession {
	s := a.sessions[id]
	if s == nil {
		s = &agentSession{id: id, wake: make(chan struct{})}
		a.sessions[id] = s
	}
	return s
}

// detach ends one Watch stream of a session: its last starts the
// session's expiry.
func (a *Agent) detach(s *agentSession) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s.watchers--
	a.armExpiry(s)
}

// armExpiry starts a session's expiry unless one of its Watch streams
// is open (or the agent stops); a.mu is held.
func (a *Agent) armExpiry(s *agentSession) {
	if s.watchers > 0 || a.closed {
		return
	}
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.expiry = time.AfterFunc(a.cfg.LeaseTTL, func() { a.expire(s) })
}

// expire stops a session's instances once no Watch of it has been open
// for the lease TTL.
func (a *Agent) expire(s *agentSession) {
	a.mu.Lock()
	if s.watchers > 0 || a.closed || a.sessions[s.id] != s {
		a.mu.Unlock()
		return
	}
	delete(a.sessions, s.id)
	mine := a.list(func(in *agentInstance) bool { return in.session == s.id })
	a.mu.Unlock()
	a.stopAll(mine, fmt.Sprintf("no supervisor has watched session %s for the lease TTL %s", s.id, a.cfg.LeaseTTL))
}

// countPhase counts the instances of a phase the agent runs or is
// launching; a.mu is held.
func (a *Agent) countPhase(phase string) int {
	n := 0
	for _, in := range a.instances {
		if in.phase == phase {
			n++
		}
	}
	for _, p := range a.launching {
		if p == phase {
			n++
		}
	}
	return n
}

// agentService serves the Agent service.
type agentService struct {
	agentv1.UnimplementedAgentServer
	a *Agent
}

func (s agentService) Hello(context.Context, *agentv1.HelloRequest) (*agentv1.HelloResponse, error) {
	r := s.a.info()
	offers := map[string]int32{}
	for k, v := range r.Offers {
		offers[k] = int32(v)
	}
	capacity := map[string]int32{}
	for k, v := range r.Capacity {
		capacity[k] = int32(v)
	}
	return &agentv1.HelloResponse{Host: r.Host, Version: buildVersion(), Gpus: r.GPUs, Offers: offers, Capacity: capacity, ZmqHost: r.ZMQHost, LeaseTtlMs: r.LeaseTTLms}, nil
}

// LiveMetadata is the Watch header that lists the session's instances
// running when the stream opened.
const LiveMetadata = "phased-live"

// idRE is what an instance id and a session id look like.
var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

func (s agentService) Launch(ctx context.Context, req *agentv1.LaunchRequest) (*agentv1.LaunchResponse, error) {
	a := s.a
	switch {
	case !config.NamePattern.MatchString(req.GetPhase()):
		return nil, status.Errorf(codes.InvalidArgument, "agent %s: phase name %q: expected %s", a.cfg.Host, req.GetPhase(), config.NameRule)
	case !config.NamePattern.MatchString(req.GetPlugin()):
		return nil, status.Errorf(codes.InvalidArgument, "agent %s: plugin name %q: expected %s", a.cfg.Host, req.GetPlugin(), config.NameRule)
	case !idRE.MatchString(req.GetInstance()) || !instanceDirRE.MatchString(req.GetInstance()):
		return nil, status.Errorf(codes.InvalidArgument, "agent %s: instance id %q: expected PHASE-N", a.cfg.Host, req.GetInstance())
	case !idRE.MatchString(req.GetSession()):
		return nil, status.Errorf(codes.InvalidArgument, "agent %s: session %q: expected letters, digits, '.', '_' or '-'", a.cfg.Host, req.GetSession())
	case req.GetGpu() != "" && !slices.Contains(a.cfg.GPUs, req.GetGpu()):
		return nil, status.Errorf(codes.InvalidArgument, "agent %s: GPU %q is not one of this host's %v", a.cfg.Host, req.GetGpu(), a.cfg.GPUs)
	}
	path, err := Catalog{Dir: a.cfg.PluginDir}.Find(sdk.KindPhase, req.GetPlugin())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "agent %s: %v", a.cfg.Host, err)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, status.Errorf(codes.Unavailable, "agent %s is stopping", a.cfg.Host)
	}
	key := req.GetSession() + "/" + req.GetInstance()
	if old := a.instances[key]; old != nil {
		a.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "agent %s runs instance %s already (pid %d): stop it first", a.cfg.Host, old.id, old.proc.pid)
	}
	if _, ok := a.launching[key]; ok {
		a.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "agent %s is launching instance %s already", a.cfg.Host, req.GetInstance())
	}
	if n, most := a.countPhase(req.GetPhase()), a.capacity()[req.GetPhase()]; n >= most {
		a.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "agent %s runs %d instances of phase %q, its most (--serve, --max)", a.cfg.Host, n, req.GetPhase())
	}
	a.launching[key] = req.GetPhase()
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.launching, key)
		a.mu.Unlock()
	}()
	// Short: socket paths are bounded (transfer.MaxSocketPath).
	dir := filepath.Join(a.runDir, req.GetInstance()+"."+strconv.FormatInt(a.launches.Add(1), 10))
	if err := os.RemoveAll(dir); err != nil {
		return nil, status.Errorf(codes.Internal, "agent %s: %v", a.cfg.Host, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "agent %s: %v", a.cfg.Host, err)
	}
	env := []string{transfer.CurveKeyFileEnv + "=" + a.bundle.CurveFile}
	if gpu := req.GetGpu(); gpu != "" {
		env = append(env, "CUDA_VISIBLE_DEVICES="+gpu)
	}
	timeout := time.Duration(req.GetStartTimeoutMs()) * time.Millisecond
	if timeout <= 0 || timeout > 10*time.Minute {
		timeout = time.Minute
	}
	pc := processConfig{
		Name: req.GetInstance(), Path: path, Kind: sdk.KindPhase, APIVersion: sdk.PhaseAPIVersion,
		Logger: a.logger.Named(req.GetInstance()), SocketDir: filepath.Join(a.runDir, "plugin"),
		StartTimeout: timeout, LogLevel: req.GetLogLevel(), CPUs: int(req.GetCpus()), Env: env,
		Pin: req.GetPin(), PinnedAt: "the supervisor's config",
	}
	if err := os.MkdirAll(pc.SocketDir, 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "agent %s: %v", a.cfg.Host, err)
	}
	proc, err := startProcess(ctx, pc)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, status.Errorf(codes.FailedPrecondition, "agent %s: %v", a.cfg.Host, err)
	}
	if err := noteGroup(a.runDir, proc.pid); err != nil {
		a.logger.Warn("note a plugin's process group in the run directory", "instance", pc.Name, "error", err)
	}
	in := &agentInstance{id: req.GetInstance(), key: key, phase: req.GetPhase(), session: req.GetSession(), dir: dir, proc: proc, ctl: proc.raw.(sdk.PhaseControl)}
	if ctx.Err() != nil { // the caller gave up: nobody would manage it
		proc.kill()
		_ = os.RemoveAll(dir)
		return nil, status.Errorf(codes.Canceled, "agent %s: instance %s: the launch was cancelled", a.cfg.Host, in.id)
	}
	// Registered before its watcher may remove it.
	if a.reg != nil {
		a.reg.addInstance(in.session+"."+in.id, instanceRecord{ID: in.id, Phase: in.phase, Host: a.cfg.Host, PID: proc.pid, Session: in.session})
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		proc.kill()
		_ = os.RemoveAll(dir)
		if a.reg != nil {
			a.reg.removeInstance(in.session + "." + in.id)
		}
		return nil, status.Errorf(codes.Unavailable, "agent %s is stopping", a.cfg.Host)
	}
	a.instances[in.key] = in
	// A session that launches and never watches expires too (its
	// supervisor died in between).
	a.armExpiry(a.session(in.session))
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		a.watchInstance(in)
	}()
	a.logger.Info("phase instance started", "instance", in.id, "phase", in.phase, "pid", proc.pid, "session", in.session)
	return &agentv1.LaunchResponse{Pid: int64(proc.pid), RunDir: dir, ZmqHost: a.cfg.ZMQHost}, nil
}

func (s agentService) Stop(_ context.Context, req *agentv1.StopRequest) (*agentv1.StopResponse, error) {
	a := s.a
	a.mu.Lock()
	in := a.instances[req.GetSession()+"/"+req.GetInstance()]
	a.mu.Unlock()
	if in == nil {
		return &agentv1.StopResponse{Status: "not running"}, nil
	}
	return &agentv1.StopResponse{Status: a.stop(in, req.GetNow(), "")}, nil
}

func (s agentService) Watch(req *agentv1.WatchRequest, stream agentv1.Agent_WatchServer) error {
	a := s.a
	if !idRE.MatchString(req.GetSession()) {
		return status.Errorf(codes.InvalidArgument, "agent %s: session %q: expected letters, digits, '.', '_' or '-'", a.cfg.Host, req.GetSession())
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return status.Errorf(codes.Unavailable, "agent %s is stopping", a.cfg.Host)
	}
	sess := a.session(req.GetSession())
	sess.watchers++
	if sess.expiry != nil {
		sess.expiry.Stop()
	}
	var live []string
	for _, in := range a.instances {
		if in.session == sess.id {
			live = append(live, in.id)
		}
	}
	a.mu.Unlock()
	defer a.detach(sess)
	slices.Sort(live)
	if err := stream.SendHeader(metadata.Pairs(LiveMetadata, strings.Join(live, ","))); err != nil {
		return err
	}
	for {
		a.mu.Lock()
		exits, wake := sess.exits, sess.wake
		sess.exits = nil
		a.mu.Unlock()
		for i, e := range exits {
			if err := stream.Send(e); err != nil {
				a.mu.Lock()
				sess.exits = append(exits[i:], sess.exits...) // the next stream sends them
				a.mu.Unlock()
				return err
			}
		}
		select {
		case <-wake:
		case <-stream.Context().Done():
			return nil
		case <-a.done:
			return status.Errorf(codes.Unavailable, "agent %s is stopping", a.cfg.Host)
		}
	}
}

// agentRouter passes each Phase call to the process of the instance it
// names.
type agentRouter struct{ a *Agent }

// errNoInstance is wrapped when a Phase call names no instance the agent
// runs: for the caller, that process is gone.
func (r agentRouter) ctl(ctx context.Context) (*agentInstance, error) {
	id := sdk.InstanceOf(ctx) // SESSION/ID
	r.a.mu.Lock()
	in := r.a.instances[id]
	r.a.mu.Unlock()
	if in == nil {
		return nil, fmt.Errorf("%w: agent %s runs no instance %q", sdk.ErrPluginGone, r.a.cfg.Host, id)
	}
	return in, nil
}

func (r agentRouter) Info(ctx context.Context) (sdk.Info, error) {
	in, err := r.ctl(ctx)
	if err != nil {
		return sdk.Info{}, err
	}
	return in.ctl.Info(ctx)
}

// Configure runs the instance in the directory the agent made for it,
// with its zmq rooms on the host's address unless the supervisor names
// one: paths on this host are the agent's to choose.
func (r agentRouter) Configure(ctx context.Context, cfg sdk.InstanceConfig) error {
	in, err := r.ctl(ctx)
	if err != nil {
		return err
	}
	// Its segments carry its name: the agent's, so that it sweeps them.
	cfg.RunDir, cfg.Instance = in.dir, in.id
	if cfg.ZMQHost == "" {
		cfg.ZMQHost = r.a.cfg.ZMQHost
	}
	return in.ctl.Configure(ctx, cfg)
}

func (r agentRouter) Ready(ctx context.Context) error {
	in, err := r.ctl(ctx)
	if err != nil {
		return err
	}
	return in.ctl.Ready(ctx)
}

func (r agentRouter) OpenRoom(ctx context.Context, spec sdk.RoomSpec) (string, error) {
	in, err := r.ctl(ctx)
	if err != nil {
		return "", err
	}
	return in.ctl.OpenRoom(ctx, spec)
}

func (r agentRouter) Run(ctx context.Context, spec sdk.RunSpec) (sdk.RunResult, error) {
	in, err := r.ctl(ctx)
	if err != nil {
		return sdk.RunResult{}, err
	}
	return in.ctl.Run(ctx, spec)
}

func (r agentRouter) RemoveRoom(ctx context.Context, room uint64) error {
	in, err := r.ctl(ctx)
	if err != nil {
		return err
	}
	return in.ctl.RemoveRoom(ctx, room)
}

func (r agentRouter) Status(ctx context.Context) (sdk.InstanceStatus, error) {
	in, err := r.ctl(ctx)
	if err != nil {
		return sdk.InstanceStatus{}, err
	}
	return in.ctl.Status(ctx)
}

func (r agentRouter) Release(ctx context.Context) error {
	in, err := r.ctl(ctx)
	if err != nil {
		return err
	}
	return in.ctl.Release(ctx)
}

func (r agentRouter) Progress(ctx context.Context, fn func(sdk.Progress)) error {
	in, err := r.ctl(ctx)
	if err != nil {
		return err
	}
	return in.ctl.Progress(ctx, fn)
}

func (r agentRouter) ValidateParams(ctx context.Context, params map[string]string) ([]sdk.ParamProblem, error) {
	in, err := r.ctl(ctx)
	if err != nil {
		return nil, err
	}
	return in.ctl.ValidateParams(ctx, params)
}

var _ sdk.PhaseControl = agentRouter{}

// buildVersion is the module version of this build ("(devel)" from a
// checkout).
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.Main.Version
	}
	return "unknown"
}

// serveHealth serves /healthz (200 while the agent serves) and /readyz
// (200 once it is registered in etcd, or at once without etcd) on
// cfg.Health; stop ends it.
func (a *Agent) serveHealth() (stop func(), err error) {
	ln, err := net.Listen("tcp", a.cfg.Health)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-a.done:
			http.Error(w, "stopping", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.reg != nil && !a.reg.registered() {
			http.Error(w, "not registered in etcd yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return func() {
		_ = srv.Close()
		<-done
	}, nil
}

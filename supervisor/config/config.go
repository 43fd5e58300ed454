// Package config reads the supervisor's configuration: HCL (or HCL's JSON
// syntax for files ending in .json), with an embedded default. Errors say
// FILE:LINE:COL and what was expected.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/transfer"
)

//go:embed default.hcl
var defaultHCL []byte

// DefaultName is the file name errors in the embedded default refer to.
const DefaultName = "<default config>"

// Defaults for settings a config leaves out.
const (
	DefaultBackend      = BackendAuto
	DefaultPolicy       = "roundrobin"
	DefaultArtifactDir  = "out"
	DefaultGrace        = 30 * time.Second
	DefaultStartTimeout = 30 * time.Second
	// DefaultPolicyTimeout bounds one Schedule call to a policy plugin.
	DefaultPolicyTimeout = time.Second
	DefaultMaxInflight   = 64
	DefaultMaxQueue      = 10000
	// MaxInstances bounds a phase's instances, and its max.
	MaxInstances = 64
	// MaxDeadline bounds a request's deadline, default_deadline's too.
	MaxDeadline = 30 * 24 * time.Hour
	// DefaultRetries is how many times a request is dispatched again after
	// an instance it used died or hung.
	DefaultRetries = 2
	// DefaultPoisonCrashes is how many distinct instances a request's
	// attempts may crash before it is failed as poison.
	DefaultPoisonCrashes = 2
	// DefaultReadyTimeout bounds an instance's readiness call (model
	// loading) after its process started.
	DefaultReadyTimeout = 5 * time.Minute
	// DefaultHangTimeout is how long a computing instance may go without
	// reporting progress (per step, for the transformer) before it is
	// killed as hung.
	DefaultHangTimeout = time.Minute
	// MaxCheckpointEvery bounds a phase's checkpoint_every.
	MaxCheckpointEvery = 1_000_000
)

// Restart defaults, in the style of systemd's StartLimitBurst and
// StartLimitIntervalSec (OTP's intensity and period): an instance or a
// policy whose process exits is restarted after a backoff that doubles
// from RestartBackoff up to RestartMaxBackoff, less a random part of up to
// RestartJitter of it; past RestartMax restarts within RestartWindow it is
// left failed.
const (
	DefaultRestartMax        = 5
	DefaultRestartWindow     = time.Minute
	DefaultRestartBackoff    = 200 * time.Millisecond
	DefaultRestartMaxBackoff = 10 * time.Second
	DefaultRestartJitter     = 0.2
)

// BackendAuto chooses each hop's transfer backend from where its two
// phases run: different hosts → zmq; the same host → cuda when both
// phases hold device buffers, else shm.
const BackendAuto = "auto"

// Backends lists the transfer backends a config may name.
var Backends = []string{BackendAuto, string(sdk.BackendShm), string(sdk.BackendZMQ), string(sdk.BackendCUDA)}

// Devices lists where a phase may hold its buffers.
var Devices = []string{sdk.DeviceCPU, sdk.DeviceCUDA}

// Config is the supervisor's configuration.
type Config struct {
	// PluginDir is where plugin binaries are found; empty means the
	// "plugins" directory beside the supervisor binary.
	PluginDir string
	// RunDir holds the run's ipc sockets; empty means a new short directory
	// in /dev/shm (else the temporary directory), removed at release.
	RunDir string
	// ArtifactDir is where the last phase writes artifacts.
	ArtifactDir string
	// Backend is the transfer backend between phases: BackendAuto (the
	// default) chooses per hop, any other value is used for every hop.
	Backend string
	// Params are passed to every phase; a phase's own params override them.
	Params map[string]string
	// ParamsAt says where each of Params is given: its key. See
	// Config.ParamAt for a phase's.
	ParamsAt map[string]Pos
	// Grace is how long release waits for in-flight requests.
	Grace time.Duration
	// PeerTimeout is how long a room waits for a peer whose connection
	// broke before it fails; 0 is the transfer manager's default (10s).
	PeerTimeout time.Duration
	// PolicyTimeout bounds one Schedule call to a policy plugin; past it,
	// the request is scheduled by the built-in round robin and the plugin
	// is restarted.
	PolicyTimeout time.Duration
	// MaxInflight bounds the requests dispatched at once (each holds a
	// room, and so receive buffers, on every hop); the others wait queued.
	MaxInflight int
	// MaxQueue bounds the requests waiting for a dispatch slot: one
	// submitted while that many wait is refused at once (HTTP 429, with
	// a Retry-After), never accepted and dropped.
	MaxQueue int
	// Retries is how many times a request is dispatched again, with new
	// rooms, after an instance it used exited or hung.
	Retries int
	// PoisonCrashes is how many distinct instances a request's attempts
	// may crash (exit, fault, hang, OOM kill) before it is failed as
	// poison; attempts lost to instances stopped from outside spend
	// neither it nor Retries.
	PoisonCrashes int
	// DefaultDeadline is the deadline of a request submitted without
	// one: how long after its submission it must be done; 0 is none.
	DefaultDeadline time.Duration
	// Phases is the pipeline, in order: the first phase receives requests,
	// the last one produces the artifact.
	Phases []Phase
	// Pins maps plugin binary names (phased-phase-encoder) to the SHA-256
	// their binary must have, from pin blocks in the config and the lock
	// file (ApplyLock).
	Pins     map[string]string
	pinnedAt map[string]Pos // binary -> where its pin is
	// Control is where the control API listens besides its unix socket.
	Control Control
	// Restart is the restart rule of the policy processes, and of the
	// instances of every phase that gives none of its own.
	Restart Restart
	// Scaler is the autoscaler: a scaler plugin called every interval;
	// none unless the config has a scaler block (or `scaler set`).
	Scaler Scaler
	// Cluster, when set, adds instances on other hosts, run by agents
	// (cluster.go); nil: every instance runs on this host.
	Cluster *Cluster
}

// Scaler is the scaler block.
type Scaler struct {
	// Name is the scaler plugin (phased-scaler-NAME); "" is none.
	Name string
	// Interval is how often it is called (DefaultScalerInterval).
	Interval time.Duration
	// Params are passed to it with every call.
	Params map[string]string
}

// DefaultScalerInterval is how often the scaler is called.
const DefaultScalerInterval = 5 * time.Second

// Control is the control block: an optional TCP listener for the control
// API. Off (Listen "") by default; `supervisor start --listen` and
// `--token-file` override it.
type Control struct {
	// Listen is HOST:PORT for the control API on TCP; "" is none.
	Listen string
	// TokenFile holds the bearer token TCP callers must send; required
	// with Listen, readable by its owner only.
	TokenFile string
}

// Phase is one phase of the pipeline.
type Phase struct {
	Name      string
	Plugin    string // the binary is phased-phase-<Plugin>
	Instances int
	// Min and Max bound the phase's instance count as `supervisor scale`
	// (and a scaler) changes it: 1 and Instances unless the config says.
	Min, Max     int
	Policy       string // the binary is phased-policy-<Policy>
	Params       map[string]string
	StartTimeout time.Duration
	// Host names the host the phase's instances run on; "" is the
	// supervisor's own. Hops between hosts use the zmq backend.
	Host string
	// Device is where the phase holds its buffers: "cpu" or "cuda".
	Device string
	// Address is what the phase's zmq rooms bind to (tcp://ADDRESS:*):
	// this host's address on the network between hosts. "" is loopback.
	Address string
	// Labels are given to the policy with every instance of the phase.
	Labels map[string]string
	// Weights, if set, holds one weight per instance (1 to 1000), given to
	// the policy as the label "weight" (the weighted policy uses it).
	Weights []int
	// ReadyTimeout bounds the readiness call after an instance's process
	// started (its model loading).
	ReadyTimeout time.Duration
	// HangTimeout is how long an instance may compute without reporting
	// progress before it is killed as hung.
	HangTimeout time.Duration
	// CPUs is how many CPUs each instance process of the phase may run
	// on at once: its GOMAXPROCS, and PHASED_CPUS for plugins in other
	// languages. 0, the default, is the host's share (Config.CPUsOf).
	CPUs int
	// CheckpointEvery, above 0, asks each Run of the phase to save its
	// state every so many steps, so that a request whose instance dies
	// resumes there on its next attempt (docs/protocol.md 8.4); 0, the
	// default, asks for none.
	CheckpointEvery int
	// MaxRooms and MaxInputBytes are each instance's credits: the
	// receiver rooms, and the bytes of their input buffers, it holds at
	// once (docs/protocol.md 2.4); 0, the default, is no limit.
	MaxRooms      int
	MaxInputBytes int64
	// Batch, when MaxSize is above 0, sets how the phase batches (a
	// plugin with the "batch" feature); zero leaves it to the plugin.
	Batch Batch
	// Restart says how an instance that exited is restarted.
	Restart Restart
	// At says where the phase is defined, for messages; zero for a phase
	// made in code.
	At PhaseAt
}

// PhaseAt is where a phase block and its parts are in its config file.
type PhaseAt struct {
	Block  Pos // the phase block
	Plugin Pos // its plugin attribute
	// Policy is where its policy is named: its policy attribute, else
	// the top-level one, else (the default policy) the block.
	Policy Pos
	Params Pos            // its params attribute; zero without one
	Param  map[string]Pos // each of its own params: its key
}

// Pos is a place in a config file, shown as FILE:LINE:COL.
type Pos struct {
	Filename     string
	Line, Column int
}

// String is FILE:LINE:COL, or "" for the zero Pos.
func (p Pos) String() string {
	if p == (Pos{}) {
		return ""
	}
	return fmt.Sprintf("%s:%d:%d", p.Filename, p.Line, p.Column)
}

func posOf(r hcl.Range) Pos {
	return Pos{Filename: r.Filename, Line: r.Start.Line, Column: r.Start.Column}
}

// ParamAt says where the param name of phase p is given: the key in the
// phase's own params, else in the top-level params, else the phase's
// params attribute, else its block (a param p's plugin adds itself, or
// a problem about the params as a whole: name "").
func (c *Config) ParamAt(p Phase, name string) Pos {
	if at, ok := p.At.Param[name]; ok {
		return at
	}
	if at, ok := c.ParamsAt[name]; ok {
		return at
	}
	if p.At.Params != (Pos{}) {
		return p.At.Params
	}
	return p.At.Block
}

// Batch bounds a phase's batches: at most MaxSize Runs, gathered for at
// most MaxWait after the first is ready.
type Batch struct {
	MaxSize int
	MaxWait time.Duration
}

// Limits on a phase's credits.
const (
	MaxRooms      = 1_000_000
	MaxInputBytes = 1 << 50
)

// Limits on a phase's batch block.
const (
	MaxBatchSize = 1024
	MaxBatchWait = time.Minute
	// DefaultBatchWait is a batch block's max_wait when it gives none.
	DefaultBatchWait = 10 * time.Millisecond
)

// Restart is a restart rule: at most Max restarts within Window, each
// after a backoff doubling from Backoff up to MaxBackoff, less a random
// part of up to Jitter (0 to 1) of it; past Max the instance or policy is
// left failed.
type Restart struct {
	Max        int
	Window     time.Duration
	Backoff    time.Duration
	MaxBackoff time.Duration
	Jitter     float64
}

// DefaultRestart is the restart rule of a config that gives none.
func DefaultRestart() Restart {
	return Restart{Max: DefaultRestartMax, Window: DefaultRestartWindow, Backoff: DefaultRestartBackoff, MaxBackoff: DefaultRestartMaxBackoff, Jitter: DefaultRestartJitter}
}

// InstanceLabels returns the labels the policy sees for instance index of
// the phase: the phase's labels, and "weight" when weights are set. It
// returns a new map each time (nil when there is none).
func (p Phase) InstanceLabels(index int) map[string]string {
	if len(p.Labels) == 0 && len(p.Weights) == 0 {
		return nil
	}
	m := make(map[string]string, len(p.Labels)+1)
	maps.Copy(m, p.Labels)
	if index < len(p.Weights) {
		m[WeightLabel] = strconv.Itoa(p.Weights[index])
	}
	return m
}

// WeightLabel is the label that carries an instance's weight.
const WeightLabel = "weight"

// MaxCPUs bounds a phase's cpus.
const MaxCPUs = 1024

// CPUShare is the host's CPUs (ncpu) shared among the processes a
// supervisor of this config starts on it — every phase instance, every
// policy, and the supervisor itself — at least 1 each: how many CPUs a
// process runs Go code on at once (GOMAXPROCS) unless its phase says
// (cpus). A Go process left at its default uses every CPU: on a host
// with fewer CPUs than processes, their idle threads spin for work on
// CPUs the others need (docs/benchmarks.md measures what that cost a
// request on two).
func (c *Config) CPUShare(ncpu int) int {
	n := 1 + len(c.Policies())
	for _, p := range c.Phases {
		n += p.Instances
	}
	return max(1, ncpu/n)
}

// CPUsOf is how many CPUs each instance process of phase p runs on: its
// cpus, else the host's share (CPUShare).
func (c *Config) CPUsOf(p Phase, ncpu int) int {
	if p.CPUs > 0 {
		return p.CPUs
	}
	return c.CPUShare(ncpu)
}

// HopBackend returns the transfer backend of the hop from phase from to
// phase to.
func (c *Config) HopBackend(from, to Phase) sdk.Backend {
	switch {
	case c.Backend != BackendAuto:
		return sdk.Backend(c.Backend)
	case from.Host != to.Host:
		return sdk.BackendZMQ
	case from.Device == sdk.DeviceCUDA && to.Device == sdk.DeviceCUDA:
		return sdk.BackendCUDA
	}
	return sdk.BackendShm
}

// PhaseParams returns the params one phase is configured with: the
// top-level params overridden by the phase's own.
func (c *Config) PhaseParams(p Phase) map[string]string {
	out := make(map[string]string, len(c.Params)+len(p.Params))
	for k, v := range c.Params {
		out[k] = v
	}
	for k, v := range p.Params {
		out[k] = v
	}
	return out
}

// Policies returns the distinct policies of the pipeline, in the order of
// their first phase.
func (c *Config) Policies() []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range c.Phases {
		if !seen[p.Policy] {
			seen[p.Policy] = true
			out = append(out, p.Policy)
		}
	}
	return out
}

// ErrInvalid is wrapped by every error about a config's content.
var ErrInvalid = errors.New("invalid config")

// DefaultHCL returns the source of the embedded default config.
func DefaultHCL() string { return string(defaultHCL) }

// ValidName reports whether s may name a phase, plugin or policy.
func ValidName(s string) bool { return namePattern.MatchString(s) }

// Default returns the embedded default configuration.
func Default() *Config {
	c, err := Parse(defaultHCL, DefaultName)
	if err != nil {
		panic("config: embedded default is invalid: " + err.Error())
	}
	return c
}

// DefaultSource returns the text of the embedded default configuration.
func DefaultSource() []byte { return append([]byte(nil), defaultHCL...) }

// Load reads and parses the config file at path.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(src, path)
}

// file, releaseBlock and phaseBlock mirror the config's syntax.
type file struct {
	PluginDir     *string        `hcl:"plugin_dir,optional"`
	RunDir        *string        `hcl:"run_dir,optional"`
	ArtifactDir   *string        `hcl:"artifact_dir,optional"`
	Backend       *string        `hcl:"backend,optional"`
	Policy        *string        `hcl:"policy,optional"`
	PolicyRange   hcl.Range      `hcl:"policy,attr_range"`
	Params        hcl.Expression `hcl:"params,optional"`
	PeerTimeout   *string        `hcl:"peer_timeout,optional"`
	PolicyTimeout *string        `hcl:"policy_timeout,optional"`
	MaxInflight   *int           `hcl:"max_inflight,optional"`
	MaxQueue      *int           `hcl:"max_queue,optional"`
	Retries       *int           `hcl:"retries,optional"`
	Deadline      *string        `hcl:"default_deadline,optional"`
	PoisonCrashes *int           `hcl:"poison_crashes,optional"`
	Release       *releaseBlock  `hcl:"release,block"`
	Control       *controlBlock  `hcl:"control,block"`
	Restart       *restartBlock  `hcl:"restart,block"`
	Scaler        *scalerBlock   `hcl:"scaler,block"`
	Phases        []phaseBlock   `hcl:"phase,block"`
	Pins          []pinBlock     `hcl:"pin,block"`
	Cluster       *clusterBlock  `hcl:"cluster,block"`
}

type releaseBlock struct {
	Grace    *string   `hcl:"grace,optional"`
	DefRange hcl.Range `hcl:",def_range"`
}

type scalerBlock struct {
	Name     string            `hcl:"name"`
	Interval *string           `hcl:"interval,optional"`
	Params   map[string]string `hcl:"params,optional"`
	DefRange hcl.Range         `hcl:",def_range"`
}

type controlBlock struct {
	Listen    *string   `hcl:"listen,optional"`
	TokenFile *string   `hcl:"token_file,optional"`
	DefRange  hcl.Range `hcl:",def_range"`
}

type phaseBlock struct {
	Name         string            `hcl:"name,label"`
	Plugin       string            `hcl:"plugin"`
	PluginRange  hcl.Range         `hcl:"plugin,attr_range"`
	Instances    *int              `hcl:"instances,optional"`
	Min          *int              `hcl:"min,optional"`
	Max          *int              `hcl:"max,optional"`
	Policy       *string           `hcl:"policy,optional"`
	PolicyRange  hcl.Range         `hcl:"policy,attr_range"`
	Params       hcl.Expression    `hcl:"params,optional"`
	ParamsRange  hcl.Range         `hcl:"params,attr_range"`
	StartTimeout *string           `hcl:"start_timeout,optional"`
	Host         *string           `hcl:"host,optional"`
	Address      *string           `hcl:"address,optional"`
	Device       *string           `hcl:"device,optional"`
	Labels       map[string]string `hcl:"labels,optional"`
	Weights      []int             `hcl:"weights,optional"`
	ReadyTimeout *string           `hcl:"ready_timeout,optional"`
	HangTimeout  *string           `hcl:"hang_timeout,optional"`
	CPUs         *int              `hcl:"cpus,optional"`
	Checkpoint   *int              `hcl:"checkpoint_every,optional"`
	MaxRooms     *int              `hcl:"max_rooms,optional"`
	MaxInput     *int64            `hcl:"max_input_bytes,optional"`
	Batch        *batchBlock       `hcl:"batch,block"`
	Restart      *restartBlock     `hcl:"restart,block"`
	DefRange     hcl.Range         `hcl:",def_range"`
}

type batchBlock struct {
	MaxSize int     `hcl:"max_size"`
	MaxWait *string `hcl:"max_wait,optional"`
}

type restartBlock struct {
	Max        *int      `hcl:"max,optional"`
	Window     *string   `hcl:"window,optional"`
	Backoff    *string   `hcl:"backoff,optional"`
	MaxBackoff *string   `hcl:"max_backoff,optional"`
	Jitter     *float64  `hcl:"jitter,optional"`
	DefRange   hcl.Range `hcl:",def_range"`
}

// namePattern is what phase, plugin and policy names look like: they become
// parts of binary names, instance ids and socket paths.
var namePattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

const nameRule = "lower-case letters, digits, '-' and '_', starting with a letter, at most 32 characters"

// NamePattern is what a phase, plugin or policy name looks like, and
// NameRule says it in words, for the checks made outside a config (an
// agent's Launch).
var NamePattern = namePattern

const NameRule = nameRule

// Parse parses a config from src; filename is used in errors and picks the
// syntax (HCL, or JSON for names ending in .json).
func Parse(src []byte, filename string) (*Config, error) {
	p := hclparse.NewParser()
	var f *hcl.File
	var diags hcl.Diagnostics
	if strings.HasSuffix(filename, ".json") {
		f, diags = p.ParseJSON(src, filename)
	} else {
		f, diags = p.ParseHCL(src, filename)
	}
	if diags.HasErrors() {
		return nil, diagError(diags)
	}
	var raw file
	if diags := gohcl.DecodeBody(f.Body, nil, &raw); diags.HasErrors() {
		return nil, diagError(diags)
	}
	return raw.build(filename)
}

func (f *file) build(filename string) (*Config, error) {
	c, errs := f.settings(filename)
	policy := deref(f.Policy, DefaultPolicy)
	if !namePattern.MatchString(policy) {
		errs = append(errs, fmt.Errorf("%s: policy %q is not a valid name; expected %s", filename, policy, nameRule))
	}
	c.Pins, c.pinnedAt = map[string]string{}, map[string]Pos{}
	errs = append(errs, addPins(c.Pins, c.pinnedAt, f.Pins)...)
	if len(f.Phases) == 0 {
		errs = append(errs, fmt.Errorf("%s: no phase blocks; expected at least one, e.g. phase \"encoder\" { plugin = \"encoder\" }", filename))
	}
	seen := map[string]hcl.Range{}
	var policyAt Pos
	if f.Policy != nil {
		policyAt = posOf(f.PolicyRange)
	}
	for _, pb := range f.Phases {
		ph, perrs := pb.build(policy, policyAt, c.Restart)
		errs = append(errs, perrs...)
		if first, dup := seen[pb.Name]; dup {
			errs = append(errs, fmt.Errorf("%s: phase %q is defined twice; first at %s", where(pb.DefRange), pb.Name, where(first)))
		}
		seen[pb.Name] = pb.DefRange
		c.Phases = append(c.Phases, ph)
	}
	errs = append(errs, f.Cluster.build(c, filename)...)
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return c, nil
}

// settings builds the config's top-level settings, all but the phases,
// policy and pins.
func (f *file) settings(filename string) (*Config, []error) {
	c := &Config{
		PluginDir:     deref(f.PluginDir, ""),
		RunDir:        deref(f.RunDir, ""),
		ArtifactDir:   deref(f.ArtifactDir, DefaultArtifactDir),
		Backend:       deref(f.Backend, DefaultBackend),
		Grace:         DefaultGrace,
		PolicyTimeout: DefaultPolicyTimeout,
		MaxInflight:   derefInt(f.MaxInflight, DefaultMaxInflight),
		MaxQueue:      derefInt(f.MaxQueue, DefaultMaxQueue),
		Retries:       derefInt(f.Retries, DefaultRetries),
		PoisonCrashes: derefInt(f.PoisonCrashes, DefaultPoisonCrashes),
		Restart:       DefaultRestart(),
	}
	var errs []error
	c.Params, c.ParamsAt, errs = decodeParams(f.Params, errs)
	if c.Retries < 0 || c.Retries > 10 {
		errs = append(errs, fmt.Errorf("%s: retries must be between 0 and 10, got %d", filename, c.Retries))
	}
	if c.PoisonCrashes < 1 || c.PoisonCrashes > 100 {
		errs = append(errs, fmt.Errorf("%s: poison_crashes must be between 1 and 100, got %d", filename, c.PoisonCrashes))
	}
	if c.MaxInflight < 1 || c.MaxInflight > 100000 {
		errs = append(errs, fmt.Errorf("%s: max_inflight must be between 1 and 100000, got %d", filename, c.MaxInflight))
	}
	if c.MaxQueue < 1 || c.MaxQueue > 1000000 {
		errs = append(errs, fmt.Errorf("%s: max_queue must be between 1 and 1000000, got %d", filename, c.MaxQueue))
	}
	if !slices.Contains(Backends, c.Backend) {
		errs = append(errs, fmt.Errorf("%s: backend %q is not supported; expected one of: %s", filename, c.Backend, strings.Join(Backends, ", ")))
	}
	if c.ArtifactDir == "" {
		errs = append(errs, fmt.Errorf("%s: artifact_dir must not be empty", filename))
	}
	if f.Release != nil {
		errs = setDuration(errs, where(f.Release.DefRange), "release: grace", f.Release.Grace, &c.Grace)
	}
	errs = setDuration(errs, filename, "policy_timeout", f.PolicyTimeout, &c.PolicyTimeout)
	errs = setDuration(errs, filename, "peer_timeout", f.PeerTimeout, &c.PeerTimeout)
	errs = setDuration(errs, filename, "default_deadline", f.Deadline, &c.DefaultDeadline)
	if c.DefaultDeadline > MaxDeadline {
		errs = append(errs, fmt.Errorf("%s: default_deadline must be at most %s, got %s", filename, MaxDeadline, c.DefaultDeadline))
	}
	if cb := f.Control; cb != nil {
		c.Control = Control{Listen: deref(cb.Listen, ""), TokenFile: deref(cb.TokenFile, "")}
		if c.Control.Listen != "" {
			if _, port, err := net.SplitHostPort(c.Control.Listen); err != nil || !validPort(port) {
				errs = append(errs, fmt.Errorf("%s: control: listen %q is not HOST:PORT; expected e.g. \"127.0.0.1:7070\"", where(cb.DefRange), c.Control.Listen))
			}
		}
	}
	if f.Restart != nil {
		errs = append(errs, f.Restart.apply(&c.Restart, "")...)
	}
	c.Scaler.Interval = DefaultScalerInterval
	if sb := f.Scaler; sb != nil {
		at := where(sb.DefRange)
		c.Scaler.Name, c.Scaler.Params = sb.Name, sb.Params
		if !namePattern.MatchString(sb.Name) {
			errs = append(errs, fmt.Errorf("%s: scaler: name %q is not a valid name; expected %s", at, sb.Name, nameRule))
		}
		errs = setDuration(errs, at, "scaler: interval", sb.Interval, &c.Scaler.Interval)
		if c.Scaler.Interval < MinScalerInterval {
			errs = append(errs, fmt.Errorf("%s: scaler: interval must be at least %s, got %s", at, MinScalerInterval, c.Scaler.Interval))
		}
	}
	return c, errs
}

// MinScalerInterval bounds how often the scaler may be called.
const MinScalerInterval = 100 * time.Millisecond

// apply sets what the block says in rule (the rest stays as given) and
// checks the result; in names the phase for errors ("" for the top level).
func (rb *restartBlock) apply(rule *Restart, in string) []error {
	var errs []error
	at := where(rb.DefRange) + ": " + in + "restart"
	rule.Max = derefInt(rb.Max, rule.Max)
	errs = setDuration(errs, at, "window", rb.Window, &rule.Window)
	errs = setDuration(errs, at, "backoff", rb.Backoff, &rule.Backoff)
	errs = setDuration(errs, at, "max_backoff", rb.MaxBackoff, &rule.MaxBackoff)
	if rb.Jitter != nil {
		rule.Jitter = *rb.Jitter
	}
	// Only what this block sets is checked here: a phase's block is
	// merged into the top-level rule, checked on its own.
	if rb.Max != nil && (rule.Max < 0 || rule.Max > 10000) {
		errs = append(errs, fmt.Errorf("%s: max must be between 0 and 10000, got %d", at, rule.Max))
	}
	if (rb.Backoff != nil || rb.MaxBackoff != nil) && rule.MaxBackoff < rule.Backoff {
		errs = append(errs, fmt.Errorf("%s: max_backoff (%s) is less than backoff (%s)", at, rule.MaxBackoff, rule.Backoff))
	}
	if rb.Jitter != nil && (rule.Jitter < 0 || rule.Jitter > 1) {
		errs = append(errs, fmt.Errorf("%s: jitter must be between 0 and 1 (a fraction of each backoff), got %g", at, rule.Jitter))
	}
	return errs
}

// build builds one phase block: policy is the config's default policy,
// policyAt where it is named (zero: not named), restart its restart rule.
func (pb phaseBlock) build(policy string, policyAt Pos, restart Restart) (Phase, []error) {
	at := where(pb.DefRange)
	ph := Phase{
		Name:            pb.Name,
		Plugin:          pb.Plugin,
		Instances:       derefInt(pb.Instances, 1),
		Policy:          deref(pb.Policy, policy),
		StartTimeout:    DefaultStartTimeout,
		Host:            deref(pb.Host, ""),
		Address:         deref(pb.Address, ""),
		Device:          deref(pb.Device, sdk.DeviceCPU),
		Labels:          pb.Labels,
		Weights:         pb.Weights,
		ReadyTimeout:    DefaultReadyTimeout,
		HangTimeout:     DefaultHangTimeout,
		CPUs:            derefInt(pb.CPUs, 0),
		Restart:         restart,
		CheckpointEvery: derefInt(pb.Checkpoint, 0),
		MaxRooms:        derefInt(pb.MaxRooms, 0),
		At:              PhaseAt{Block: posOf(pb.DefRange), Plugin: posOf(pb.PluginRange), Policy: policyAt},
	}
	var errs []error
	ph.Params, ph.At.Param, errs = decodeParams(pb.Params, errs)
	if ph.Params != nil {
		ph.At.Params = posOf(pb.ParamsRange)
	}
	switch {
	case pb.Policy != nil:
		ph.At.Policy = posOf(pb.PolicyRange)
	case policyAt == (Pos{}):
		ph.At.Policy = ph.At.Block
	}
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: phase %q: "+format, append([]any{at, pb.Name}, args...)...))
	}
	in := fmt.Sprintf("%s: phase %q", at, pb.Name)
	errs = setDuration(errs, in, "ready_timeout", pb.ReadyTimeout, &ph.ReadyTimeout)
	errs = setDuration(errs, in, "hang_timeout", pb.HangTimeout, &ph.HangTimeout)
	errs = setDuration(errs, in, "start_timeout", pb.StartTimeout, &ph.StartTimeout)
	if pb.Restart != nil {
		errs = append(errs, pb.Restart.apply(&ph.Restart, fmt.Sprintf("phase %q: ", pb.Name))...)
	}
	if _, ok := ph.Labels[WeightLabel]; ok {
		fail("labels: %q is reserved: give weights = [...] instead", WeightLabel)
	}
	if len(ph.Weights) > 0 && len(ph.Weights) != ph.Instances {
		fail("weights has %d values for %d instances; give one per instance", len(ph.Weights), ph.Instances)
	}
	for i, w := range ph.Weights {
		if w < 1 || w > 1000 {
			fail("weights[%d] is %d; each weight must be between 1 and 1000", i, w)
		}
	}
	if ph.Address != "" {
		if err := transfer.CheckHost(ph.Address); err != nil {
			fail("address %q: %w", ph.Address, err)
		}
	}
	if !slices.Contains(Devices, ph.Device) {
		fail("device %q is not supported; expected one of: %s", ph.Device, strings.Join(Devices, ", "))
	}
	for _, n := range []struct{ what, v string }{{"phase name", ph.Name}, {"plugin", ph.Plugin}, {"policy", ph.Policy}} {
		if !namePattern.MatchString(n.v) {
			fail("%s %q is not a valid name; expected %s", n.what, n.v, nameRule)
		}
	}
	// 0 instances here: all of them on agents (checked with the
	// cluster block, in build).
	if ph.Instances < 0 || ph.Instances > MaxInstances {
		fail("instances must be between 0 (all on agents) and %d, got %d", MaxInstances, ph.Instances)
	}
	ph.Min, ph.Max = derefInt(pb.Min, min(1, ph.Instances)), derefInt(pb.Max, ph.Instances)
	if ph.Min < min(1, ph.Instances) || ph.Min > ph.Instances || ph.Max < ph.Instances || ph.Max > MaxInstances {
		fail("min %d, instances %d, max %d: want %d <= min <= instances <= max <= %d", ph.Min, ph.Instances, ph.Max, min(1, ph.Instances), MaxInstances)
	}
	if pb.MaxInput != nil {
		ph.MaxInputBytes = *pb.MaxInput
	}
	if ph.MaxRooms < 0 || ph.MaxRooms > MaxRooms || ph.MaxInputBytes < 0 || ph.MaxInputBytes > MaxInputBytes {
		fail("max_rooms %d, max_input_bytes %d: want 0 (no limit) to %d and to %d", ph.MaxRooms, ph.MaxInputBytes, MaxRooms, MaxInputBytes)
	}
	if b := pb.Batch; b != nil {
		ph.Batch = Batch{MaxSize: b.MaxSize, MaxWait: DefaultBatchWait}
		if b.MaxWait != nil {
			d, err := time.ParseDuration(*b.MaxWait)
			if err != nil || d < 0 || d > MaxBatchWait {
				fail("batch: max_wait %q: want a duration from 0s to %s, e.g. \"10ms\"", *b.MaxWait, MaxBatchWait)
			}
			ph.Batch.MaxWait = d
		}
		if b.MaxSize < 1 || b.MaxSize > MaxBatchSize {
			fail("batch: max_size must be between 1 (no batching) and %d, got %d", MaxBatchSize, b.MaxSize)
		}
		if ph.MaxRooms > 0 && ph.MaxRooms < ph.Batch.MaxSize {
			fail("batch: max_size %d is more than max_rooms %d: a batch could never fill", ph.Batch.MaxSize, ph.MaxRooms)
		}
	}
	if ph.CheckpointEvery < 0 || ph.CheckpointEvery > MaxCheckpointEvery {
		fail("checkpoint_every must be between 0 (no checkpoints) and %d steps, got %d", MaxCheckpointEvery, ph.CheckpointEvery)
	}
	if pb.CPUs != nil && (ph.CPUs < 1 || ph.CPUs > MaxCPUs) {
		fail("cpus must be between 1 and %d, got %d; leave it out for the host's share", MaxCPUs, ph.CPUs)
	}
	return ph, errs
}

// decodeParams decodes a params attribute (a null expression when it is
// absent: nil, nil) into a map of strings, and where each key is; an
// error is appended to errs.
func decodeParams(expr hcl.Expression, errs []error) (map[string]string, map[string]Pos, []error) {
	if expr == nil {
		return nil, nil, errs
	}
	if v, diags := expr.Value(nil); !diags.HasErrors() && v.IsNull() {
		return nil, nil, errs
	}
	var m map[string]string
	if diags := gohcl.DecodeExpression(expr, nil, &m); diags.HasErrors() {
		return nil, nil, append(errs, diagErrors(diags)...)
	}
	at := make(map[string]Pos, len(m))
	pairs, diags := hcl.ExprMap(expr)
	if !diags.HasErrors() {
		for _, kv := range pairs {
			var k string
			if gohcl.DecodeExpression(kv.Key, nil, &k).HasErrors() {
				continue
			}
			at[k] = posOf(kv.Key.Range())
		}
	}
	return m, at, errs
}

func validPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 0 && n <= 65535
}

// setDuration parses v into *into when v is set, appending to errs an
// error that names at and what when it is not a positive duration.
func setDuration(errs []error, at, what string, v *string, into *time.Duration) []error {
	if v == nil {
		return errs
	}
	d, err := parseDuration(*v)
	*into = d
	if err != nil {
		errs = append(errs, fmt.Errorf("%s: %s: %w", at, what, err))
	}
	return errs
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration; expected e.g. \"30s\" or \"2m\"", s)
	}
	return d, nil
}

// diagError formats HCL diagnostics as FILE:LINE:COL: summary; detail.
func diagError(diags hcl.Diagnostics) error {
	return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(diagErrors(diags)...))
}

// diagErrors is each error of diags as FILE:LINE:COL: summary; detail.
func diagErrors(diags hcl.Diagnostics) []error {
	var errs []error
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += "; " + d.Detail
		}
		if d.Subject != nil {
			msg = where(*d.Subject) + ": " + msg
		}
		errs = append(errs, errors.New(msg))
	}
	return errs
}

func where(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}

func deref(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}

func derefInt(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

// Package sdk is the contract of phased plugins: the Phase and Policy
// interfaces and their types, the go-plugin handshake and plugin map that
// the supervisor and its plugins share, the gRPC shims that keep protobuf
// out of both, and ServePolicy, so that a policy plugin's main is one call.
// It links no cgo: a policy plugin builds with CGO_ENABLED=0.
//
// A phase author implements Phase (three methods, ctx first) and never sees
// protobuf types, sockets or shared memory: its main calls phase.Serve
// (package sdk/phase, the phase runtime), which owns the transfer manager
// (package sdk/transfer), opens and removes rooms on the supervisor's
// orders, waits for the inputs, calls Run, and moves the outputs to the
// next phase. docs/protocol.md specifies the same for other languages.
//
// Errors that cross the plugin boundary arrive as *RemoteError; callers
// branch on the sentinels ErrPluginGone (the plugin process or its
// connection is gone) and ErrTimedOut (the call hit its deadline), never
// on gRPC codes or message text.
package sdk

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/sdk/tensor"
)

// Kind is the kind of a plugin.
type Kind string

// The plugin kinds.
const (
	KindPhase  Kind = "phase"
	KindPolicy Kind = "policy"
)

// API versions of each kind that this SDK speaks. A plugin reports the
// versions it speaks in Info; the supervisor refuses a plugin that does not
// speak its version.
//
// History: 1 — first version. Later additions that keep version 1, because
// a peer without them still works: the Phase RPCs Ready and Progress
// (PhaseControl.Ready, PhaseControl.Progress). A phase plugin built before
// them answers gRPC Unimplemented, which the client side turns into "ready
// right after Configure" (Ready returns nil) and ErrNoProgress.
const (
	PhaseAPIVersion  = 1
	PolicyAPIVersion = 1
)

// APIVersion returns the API version of plugin kind k this SDK speaks, 0
// for an unknown kind.
func APIVersion(k Kind) int {
	switch k {
	case KindPhase:
		return PhaseAPIVersion
	case KindPolicy:
		return PolicyAPIVersion
	case KindScaler:
		return ScalerAPIVersion
	}
	return 0
}

// Info describes a plugin.
type Info struct {
	Name        string // plugin name, e.g. "encoder"
	Kind        Kind
	Version     string // the plugin's own version, free form
	APIVersions []int  // API versions of its kind the plugin speaks
	// Features are the optional parts of its API version the plugin
	// implements (FeatureStandbyReceiver); a client uses no other.
	Features []string
}

// Has reports whether info lists feature f.
func (i Info) Has(f string) bool { return slices.Contains(i.Features, f) }

// FeatureStandbyReceiver: the phase plugin opens a receiver side ahead of
// its request (RoomSpec.Standby) and arms it later.
const FeatureStandbyReceiver = "standby-receiver"

// Request is one generation request as a phase sees it.
type Request struct {
	ID          string
	Prompt      string
	Seed        int64
	Steps       int
	ArtifactDir string // where the last phase writes its artifact
	// NoSync says the supervisor keeps no request journal (nothing of
	// the request survives it), so the last phase need not fsync its
	// artifact; false asks for a durable artifact before Run returns.
	NoSync bool
	// Checkpoint, on a Run of a phase whose config sets checkpoint_every,
	// is where and how often the Run saves its state for a retry to
	// resume from (sdk.Checkpoint, sdk.Resume; docs/protocol.md 8.4).
	// Zero: no checkpoints.
	Checkpoint CheckpointSpec
}

// CheckpointSpec says where a Run keeps its checkpoint and how often it
// saves it.
type CheckpointSpec struct {
	// Path is the checkpoint file, absolute; its directory exists.
	Path string
	// Every is how many steps apart the saves are; 0 means none.
	Every int
}

// Artifact is what the last phase of a pipeline produces.
type Artifact struct {
	Path      string
	SHA256    string // hex
	Size      int64
	MediaType string
}

// Output is the result of Phase.Run: tensors for the next phase, or, from
// the last phase, an artifact.
type Output struct {
	Tensors  []tensor.Tensor
	Artifact *Artifact
}

// Phase is what a phase plugin implements.
//
// Lifecycle: the value is built without side effects; Configure (if the
// phase implements Configurer) is called once before any other call; Load
// (if the phase implements Loader) then runs in the background, and no
// request reaches the phase before it has returned nil; Inputs and Run are
// then called concurrently for many requests; Close (if the phase
// implements Closer) is called once at release, after Run and Load calls
// have returned or Release's deadline has passed.
type Phase interface {
	// Info describes the plugin; Kind must be KindPhase.
	Info(ctx context.Context) (Info, error)
	// Inputs declares the tensors this phase receives for req, in order.
	// The first phase of a pipeline returns none.
	Inputs(ctx context.Context, req Request) ([]tensor.Spec, error)
	// Run computes req's outputs from its inputs, which match Inputs and
	// are valid until the outputs have been sent: an output may be an
	// input passed on. Inputs are read-only (one lent by a zero-copy
	// hand-off is a read-only mapping of the sender's memory, and a write
	// fails the Run): copy an input to change it. Outputs written into
	// Alloc's memory are lent to the next phase on one host instead of
	// copied. Each receiver takes, by name, the outputs it
	// declares in its Inputs; others are not sent. Run should return
	// promptly when ctx is cancelled (the request was removed).
	Run(ctx context.Context, req Request, in []tensor.Tensor) (Output, error)
}

// Config is what the supervisor's config says about one phase instance.
type Config struct {
	Instance string            // instance id, e.g. "transformer-1"
	Params   map[string]string // the phase's params from the config
	Logger   hclog.Logger      // the plugin's logger, named after the instance
}

// Configurer is implemented by phases that take parameters.
type Configurer interface {
	Configure(ctx context.Context, cfg Config) error
}

// ParamsValidator is implemented by phases that can check their params
// without loading anything, so that `supervisor validate` reports a typo
// before any model is loaded. ValidateParams is called on an instance
// that is not configured (it may be one started for that alone) and
// must not load weights, open files it does not need, or keep state.
// It returns every problem found, none when params are valid; the error
// is for a failure to check, not for bad params.
type ParamsValidator interface {
	ValidateParams(ctx context.Context, params map[string]string) ([]ParamProblem, error)
}

// ErrNoValidation is wrapped by PhaseControl.ValidateParams's error when
// the plugin cannot check params before Configure.
var ErrNoValidation = errors.New("the plugin does not validate params before it loads")

// Loader is implemented by phases that take long to get ready, typically to
// load model weights. The runtime calls Load once, in a goroutine of its
// own, right after a successful Configure, which returns to the supervisor
// without waiting for it; the supervisor learns the outcome from
// PhaseControl.Ready. Until Load has returned, the instance refuses
// requests; when it fails, the instance stays unusable and Ready returns
// its error. ctx is cancelled when the instance is released during the
// load: Load should then return promptly. sdk.RunLocal calls neither
// Configure nor Load.
type Loader interface {
	Load(ctx context.Context) error
}

// Closer is implemented by phases that hold resources to free at release.
type Closer interface {
	Close(ctx context.Context) error
}

// DevicePhase is implemented by phases that work on tensors in GPU memory.
// On an instance whose device is "cuda", a hop from another GPU instance
// arrives in device memory: a DevicePhase gets those inputs as they are
// (DevicePtr set, no Data); any other phase gets host copies, so that a CPU
// phase runs unchanged in a GPU pipeline.
type DevicePhase interface {
	Phase
	// TakesDeviceTensors returns true.
	TakesDeviceTensors() bool
}

// Candidate is one instance a policy may choose for a phase, with its load.
type Candidate struct {
	ID            string // instance id, e.g. "transformer-1"
	Index         int    // position within its phase, from 0
	Ready         bool   // false: do not choose it
	OpenRooms     int
	Inflight      int     // requests dispatched and not finished
	LatencyEWMAms float64 // recent per-request latency in milliseconds
	Labels        map[string]string
}

// PhaseCandidates lists the candidates of one phase.
type PhaseCandidates struct {
	Phase      string
	Candidates []Candidate
}

// PolicyInfo returns the Info of a policy plugin named name at version,
// speaking this SDK's policy API.
func PolicyInfo(name, version string) Info {
	return Info{Name: name, Kind: KindPolicy, Version: version, APIVersions: []int{PolicyAPIVersion}}
}

// Ready returns the candidates that may be chosen, in index order.
func (pc PhaseCandidates) Ready() []Candidate {
	var out []Candidate
	for _, c := range pc.Candidates {
		if c.Ready {
			out = append(out, c)
		}
	}
	return out
}

// ErrNoReady is returned by a policy for a phase without a ready candidate.
var ErrNoReady = errors.New("no ready instance")

// EachPhase builds a policy's Decision: it calls choose once per phase of
// req, in order, with the phase's ready candidates in index order, and
// records the candidate it returns. A phase without a ready candidate fails
// with an error wrapping ErrNoReady (choose is not called); errors name the
// policy and the phase. Most policies are one EachPhase call.
func EachPhase(policy string, req ScheduleRequest, choose func(phase string, ready []Candidate) (Candidate, error)) (Decision, error) {
	d := Decision{Choices: make(map[string]string, len(req.Phases))}
	for _, ph := range req.Phases {
		ready := ph.Ready()
		if len(ready) == 0 {
			return Decision{}, fmt.Errorf("%s: phase %q: %w among %d candidates", policy, ph.Phase, ErrNoReady, len(ph.Candidates))
		}
		c, err := choose(ph.Phase, ready)
		if err != nil {
			return Decision{}, fmt.Errorf("%s: phase %q: %w", policy, ph.Phase, err)
		}
		d.Choices[ph.Phase] = c.ID
	}
	return d, nil
}

// ScheduleRequest is a snapshot of the candidates of every phase a policy
// serves, for one request.
type ScheduleRequest struct {
	RequestID string
	Phases    []PhaseCandidates
	// Key is what requests that belong together share (a LoRA, a model
	// variant), for policies that keep them on one instance; "" when the
	// submitter gave none.
	Key string
}

// Decision maps each phase of the ScheduleRequest to the chosen candidate id.
type Decision struct {
	Choices map[string]string
}

// Policy is what a scheduling-policy plugin implements. Every Schedule call
// carries the full candidate snapshot, so a policy keeps no membership state
// and may be restarted or swapped at any time. Schedule is called
// concurrently.
type Policy interface {
	// Info describes the plugin; Kind must be KindPolicy.
	Info(ctx context.Context) (Info, error)
	// Schedule picks one ready candidate for every phase in req.
	Schedule(ctx context.Context, req ScheduleRequest) (Decision, error)
}

package sdk

import (
	"context"
	"time"
)

// PhaseControl is how the supervisor drives one phase instance. The gRPC
// client that PhasePlugin dispenses implements it; on the plugin side the
// SDK's phase runtime serves it around the author's Phase.
//
// Lifecycle: Info → Configure (once) → Ready → OpenRoom / Run / RemoveRoom
// / Status, concurrently, any number of times → Release (idempotent).
// Progress may be open at any time before Release.
type PhaseControl interface {
	Info(ctx context.Context) (Info, error)
	// Configure starts the instance's transfer manager and, for a phase
	// that implements Loader, its loading, without waiting for it.
	Configure(ctx context.Context, cfg InstanceConfig) error
	// Ready blocks until the instance can take requests, or ctx ends. It
	// returns nil once the phase's loading has finished (at once for a
	// phase without Loader, and for a plugin built before Ready existed),
	// the loading's error (prefixed "loading: ") every time it is called
	// after the loading failed, and an error wrapping ErrInvalid before
	// Configure. Until then OpenRoom and Run are refused.
	Ready(ctx context.Context) error
	// OpenRoom opens one side of a hop and, for the sender, returns the
	// endpoint its room socket is bound to.
	OpenRoom(ctx context.Context, spec RoomSpec) (endpoint string, err error)
	// Run does this instance's part of a request and returns when it is
	// done: the last phase returns the artifact, the others what they
	// sent.
	Run(ctx context.Context, spec RunSpec) (RunResult, error)
	// RemoveRoom returns once the instance no longer touches the room's
	// buffers or sockets. Removing an unknown room succeeds.
	RemoveRoom(ctx context.Context, room uint64) error
	Status(ctx context.Context) (InstanceStatus, error)
	// Release cancels the phase's loading if it still runs, removes every
	// room, stops the transfer manager and ends every Progress call.
	Release(ctx context.Context) error
	// Progress calls fn, from one goroutine, with the latest event of
	// every Run in progress and then with every new event of the
	// instance's Run calls, until ctx ends or the instance is released
	// (it then returns nil) or the connection breaks (an error). A plugin
	// built before Progress existed makes it return an error wrapping
	// ErrNoProgress. A slow fn never slows a Run down: events it is too
	// slow for are dropped, the oldest first.
	Progress(ctx context.Context, fn func(Progress)) error
	// ValidateParams checks params as Configure would, without loading
	// anything; it may be called before Configure. It returns the
	// problems found (none: valid), or an error wrapping
	// ErrNoValidation when the plugin cannot check params before
	// Configure (a phase without ParamsValidator, or a plugin built
	// before ValidateParams existed).
	ValidateParams(ctx context.Context, params map[string]string) ([]ParamProblem, error)
}

// RunResult is what a Run did: the artifact of the last phase, or what
// a phase with an out room sent.
type RunResult struct {
	Artifact *Artifact // the last phase's; nil for the others
	// SentBytes are the bytes of the outputs sent into the out room, and
	// SendTime the time from handing them to the transfer manager to the
	// receiver's Success.
	SentBytes int64
	SendTime  time.Duration
	// OutDrained reports that the out room's sender side has nothing in
	// flight (its Send ended in the receiver's shared memory, with no
	// frame queued): the supervisor may remove it before the receiver
	// returns. False when unsure.
	OutDrained bool
	// OutRemoved and InRemoved report that the runtime removes the Run's
	// out room's sender side (it was drained) or its in room's receiver
	// side (its sender had let go of it: transfer.Manager.SenderLeft)
	// itself, in the order of invariant 1: out of use before the answer,
	// its sockets closed right after it (transfer.Manager.RemoveSoon).
	// The supervisor sends no RemoveRoom for them. False for a runtime
	// that leaves every removal to the supervisor.
	OutRemoved, InRemoved bool
}

// ParamProblem is one thing wrong with a phase's params.
type ParamProblem struct {
	Param   string // the param's name; "" for the params as a whole
	Message string // what is wrong and what is accepted
}

// Metric is one sample of an instance's own figures (a counter or a
// gauge), which the supervisor exposes on /metrics as
// phased_phase_NAME{phase,instance,LABELS...}.
type Metric struct {
	Name    string // [a-z_][a-z0-9_]*, without a prefix
	Help    string
	Counter bool // true: only grows; false: a gauge
	Labels  map[string]string
	Value   float64
}

// InstanceConfig configures one phase instance.
type InstanceConfig struct {
	Instance string            // instance id, e.g. "transformer-1"
	RunDir   string            // existing directory for the instance's ipc sockets
	Params   map[string]string // the phase's params from the config
	// ZMQHost is the address the instance's zmq rooms bind to; "" is
	// loopback.
	ZMQHost string
	// PeerTimeout bounds how long a room waits for a peer whose
	// connection broke; 0 is the transfer manager's default.
	PeerTimeout time.Duration
	// Device is where the instance holds its buffers: "" or DeviceCPU,
	// or DeviceCUDA, which enables cuda rooms on the first GPU the
	// process sees (CUDA_VISIBLE_DEVICES picks it).
	Device string
	// MaxRooms and MaxInputBytes bound the receiver rooms with buffers,
	// and the bytes of those buffers, that the instance holds at once;
	// an OpenRoom beyond either fails with ErrNoCredit. 0: no limit.
	MaxRooms      int
	MaxInputBytes int64
	// Batch, for a phase that batches (BatchPhase), overrides its
	// BatchLimits when MaxSize is above 0; MaxSize 1 turns batching off.
	Batch BatchLimits
}

// Where an instance holds its buffers.
const (
	DeviceCPU  = "cpu"
	DeviceCUDA = "cuda"
)

// RoomSpec says which side of which hop to open. Room ids start at 1.
type RoomSpec struct {
	Room         uint64
	Role         Role
	Request      Request // the receiver derives its input specs from it
	PeerEndpoint string  // receiver only: the sender's endpoint
	Backend      Backend // the hop's transfer backend; "" means BackendShm
	// Standby, receiver only (FeatureStandbyReceiver): open the side
	// before its request is known, connected to PeerEndpoint but with no
	// buffers and no descriptor sent; Request is unset. A later OpenRoom
	// of the same room, backend and peer, with the request, arms it.
	Standby bool
}

// RunSpec names a request and the rooms its inputs arrive on and its outputs
// leave by; 0 means none (first or last phase).
type RunSpec struct {
	Request Request
	InRoom  uint64
	OutRoom uint64
}

// InstanceStatus is what an instance reports about its rooms.
type InstanceStatus struct {
	Rooms         []RoomInfo
	DroppedFrames uint64
	// DroppedProgress counts the progress events that Progress streams
	// too slow to read them dropped, all streams together.
	DroppedProgress uint64
	// Metrics are the instance's own figures: its transfer manager's
	// counters, its steps.
	Metrics []Metric
}

package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	zmq "github.com/pebbe/zmq4"
	"golang.org/x/sys/unix"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// Errors a caller may branch on with errors.Is. Returned errors wrap them
// with the room id and, for ErrFailed, the room's reason.
var (
	// ErrUnknownRoom: no open room has this id (or it has the other role).
	ErrUnknownRoom = errors.New("transfer: unknown room")
	// ErrRoomExists: the id is open or was used before; ids are never reused.
	ErrRoomExists = errors.New("transfer: room id already used")
	// ErrRemoved: the room was removed while the call waited on it.
	ErrRemoved = errors.New("transfer: room removed")
	// ErrFailed: the room is Failed; the error carries its reason.
	ErrFailed = errors.New("transfer: room failed")
	// ErrReleased: the Manager was released.
	ErrReleased = errors.New("transfer: manager released")
	// ErrNotStarted: Start was not called.
	ErrNotStarted = errors.New("transfer: manager not started, call Start first")
	// ErrTooManyFiles: the process reached its file-descriptor limit (or
	// the zmq context's socket limit, which Start derives from it). The
	// open that hit it failed; other rooms are not affected.
	ErrTooManyFiles = errors.New("too many open files: raise the file-descriptor limit (ulimit -n)")
)

// fdErr marks an error caused by the file-descriptor limit (EMFILE,
// ENFILE, from the kernel or from libzmq) with ErrTooManyFiles.
func fdErr(err error) error {
	var ze zmq.Errno
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.As(err, &ze) && (ze == zmq.Errno(syscall.EMFILE) || ze == zmq.Errno(syscall.ENFILE)) {
		return fmt.Errorf("%w (%w)", ErrTooManyFiles, err)
	}
	return err
}

type managerState int

const (
	stateNew managerState = iota
	stateStarted
	stateReleased
)

// Manager is the transfer manager of one phase process: it owns the
// process's room sockets, its shared-memory segments, one socket-owner
// goroutine and one transfer worker. See the package comment for the
// lifecycle. All methods are safe for concurrent use.
type Manager struct {
	cfg      Config
	log      hclog.Logger
	nextGen  atomic.Uint64
	dropped  atomic.Uint64
	refused  atomic.Uint64 // clients the ZAP handler refused (Refused)
	counters counters
	// clientKeys is the CURVE pair that connecting sockets present:
	// Config.Curve; a test sets another before Start.
	clientKeys *CurveKeys

	mu       sync.Mutex
	state    managerState
	released chan struct{} // closed when Release's teardown has finished
	// releaseErr is the teardown's outcome, set before released is
	// closed; stopping names what it waits for (a string).
	releaseErr error
	stopping   atomic.Value
	rooms      map[uint64]*room
	ids        usedIDs
	pool       *pool     // the receiver's idle segments
	outputs    *outputs  // the sender's output segments (Alloc) and lend table
	peers      *peerMaps // the receiver's mappings of segments lent to it

	// Set by Start; read-only afterwards.
	zctx       *zmq.Context
	cmds       chan command
	jobs       chan *job
	maps       *mapCache     // the worker's mappings of receiver segments
	quit       chan struct{} // closed by Release to stop the worker
	ownerDone  chan struct{}
	workerDone chan struct{}
	// The cuda backend's, with Config.CUDA: the GPU, and the completer
	// goroutine that finishes the jobs whose copies the worker issued.
	gpu           gpu
	deviceJobs    chan *deviceJob
	completerDone chan struct{}

	wakeMu sync.Mutex
	wakeFD int // the owner's wake-up eventfd; -1 before Start and after Release
}

// room is one side of a room. Fields below mu are guarded by Manager.mu.
type room struct {
	id       uint64
	role     Role
	backend  sdk.Backend
	endpoint string // sender: its room socket; receiver: its status socket

	abort atomic.Bool // set by Remove; the worker checks it between chunks

	status    Status
	reason    string
	changed   chan struct{} // closed and replaced on every change
	removing  bool
	gone      chan struct{} // closed when Remove has finished
	ended     sync.Once     // the removal's end (finishRemove) runs once
	removeErr error

	// Sender.
	desc    *descriptor // the validated descriptor, once it arrived
	file    *peerFile   // a shm room's segment, opened when desc arrived, until the worker takes it
	peer    gpuPeer     // a cuda room's receiver memory, once opened
	sending bool        // a Send is waiting, running or done
	busy    bool        // the worker holds the room
	drained bool        // the Send ended in the control block: no frame

	// Receiver.
	gen    uint64
	seg    *segment
	bufs   []buffer
	final  []header // the Success frame's tensors, once it arrived
	sumsAt uint64   // a shm room's checksum table (the fast path)
	// handoffsAt is a fast-path room's hand-off table; lent holds the
	// output segments its sender lent it, once a Receive took them
	// (tookLent), until the room's segment is idle.
	handoffsAt uint64
	lent       []taken
	tookLent   bool
	// movedByCtrl: the control block, not a frame, moved the room to
	// Transferring (observeLocked); one Transferring frame is then no
	// duplicate.
	movedByCtrl bool
	verifying   bool // a Receive is hashing the buffers (it owns verify)
	verify      verifier
	hashed      uint64 // verify.pos, published under m.mu
	ctrl        *ctrl  // a shm room's control block, in seg
	sleeping    bool   // the verifying Receive sleeps on ctrl: notify wakes it
	senderDone  bool   // a Success or Failed frame came: the sender writes no more
	// senderLeft: the connection to the sender's room socket dropped
	// (its side closed it, or its process went) and has not come back.
	senderLeft bool
	connected  bool // the connection to the sender's room socket was made once
	// standby: opened by OpenStandby, connected to the sender at
	// standbyPeer, and not armed yet: no buffers, no descriptor sent.
	standby     bool
	standbyPeer string
}

func newRoom(id uint64, role Role) *room {
	return &room{id: id, role: role, status: Bootstrapping, changed: make(chan struct{}), gone: make(chan struct{})}
}

// notify wakes every goroutine waiting on the room. Manager.mu is held.
func (r *room) notify() {
	close(r.changed)
	r.changed = make(chan struct{})
	if r.sleeping { // the sleeper holds a reference: ctrl is mapped
		r.ctrl.wake()
	}
}

// New checks cfg and returns a Manager. It has no side effects: no socket,
// file or goroutine exists until Start.
func New(cfg Config) (*Manager, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:      cfg,
		log:      cfg.Logger,
		released: make(chan struct{}),
		rooms:    make(map[uint64]*room),
		ids:      usedIDs{set: make(map[uint64]struct{})},
		wakeFD:   -1,
	}
	m.clientKeys = cfg.Curve
	// Generations start at a random point so that two runs sharing Dir or
	// ShmDir never produce the same endpoint or segment name.
	m.nextGen.Store(rand.Uint64() >> 1)
	m.pool = newPool(cfg.ShmDir, cfg.Name, uint64(cfg.PoolBytes), cfg.PoolSegments, func() uint64 { return m.nextGen.Add(1) })
	m.outputs = newOutputs(cfg.ShmDir, cfg.Name, uint64(cfg.PoolBytes), cfg.PoolSegments, cfg.VerifyHandoffs)
	m.peers = &peerMaps{maxSegs: mapCacheSegments, maxBytes: mapCacheBytes}
	return m, nil
}

// Start creates the zmq context and starts the socket owner and the
// transfer worker. It may be called once.
func (m *Manager) Start() (err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch m.state {
	case stateStarted:
		return errors.New("transfer: manager already started")
	case stateReleased:
		return ErrReleased
	}
	zctx, err := zmq.NewContext()
	if err != nil {
		return fmt.Errorf("transfer: start: new zmq context: %w", err)
	}
	// libzmq allows 1023 sockets per context by default; a room holds up
	// to four (see the package comment), so allow as many as the process
	// may open files.
	if err := zctx.SetMaxSockets(m.maxSockets()); err != nil {
		return errors.Join(fmt.Errorf("transfer: start: set the zmq socket limit to %d: %w", m.maxSockets(), err), zctx.Term())
	}
	var g gpu
	if m.cfg.CUDA {
		if g, err = openGPU(m.cfg.CUDADevice); err != nil {
			return errors.Join(fmt.Errorf("transfer: start: cuda device %d: %w", m.cfg.CUDADevice, err), zctx.Term())
		}
	}
	closeGPU := func() error {
		if g == nil {
			return nil
		}
		return g.Close()
	}
	wakeFD, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return errors.Join(fmt.Errorf("transfer: start: eventfd: %w", err), closeGPU(), zctx.Term())
	}
	m.wakeMu.Lock()
	m.wakeFD = wakeFD
	m.wakeMu.Unlock()
	o, err := newOwner(m)
	if err != nil {
		m.closeWake()
		return errors.Join(fmt.Errorf("transfer: start: %w", err), closeGPU(), zctx.Term())
	}
	if m.cfg.Curve != nil {
		// The handler's socket is made here and handed to the owner
		// goroutine, which alone uses it from its start (the go
		// statement orders the two).
		if err := o.serveZAP(zctx, m.cfg.Curve.Public); err != nil {
			m.closeWake()
			return errors.Join(fmt.Errorf("transfer: start: %w", err), o.file.Close(), closeGPU(), zctx.Term())
		}
	}
	m.zctx = zctx
	m.cmds = make(chan command, 64)
	m.jobs = make(chan *job)
	m.maps = &mapCache{maxSegs: mapCacheSegments, maxBytes: mapCacheBytes}
	m.quit = make(chan struct{})
	m.ownerDone = make(chan struct{})
	m.workerDone = make(chan struct{})
	m.gpu = g
	m.completerDone = make(chan struct{})
	go o.run()
	go m.work()
	if g != nil {
		m.deviceJobs = make(chan *deviceJob, maxDeviceJobs)
		go m.complete()
	} else {
		close(m.completerDone)
	}
	m.state = stateStarted
	m.log.Debug("transfer manager started", "name", m.cfg.Name, "dir", m.cfg.Dir, "shm_dir", m.cfg.ShmDir, "curve", m.cfg.Curve != nil)
	return nil
}

// OpenSender opens the sender side of a room: it binds the room socket and
// returns its endpoint, to be given to the receiver. The room is
// Bootstrapping until the receiver's descriptor arrives.
func (m *Manager) OpenSender(id uint64) (string, error) {
	return m.OpenSenderWith(id, sdk.BackendShm)
}

// OpenSenderWith is OpenSender for a room of the given backend. A zmq
// room's socket binds tcp://ZMQHost on a port the system picks.
func (m *Manager) OpenSenderWith(id uint64, backend sdk.Backend) (string, error) {
	r := newRoom(id, Sender)
	r.backend = backend
	switch backend {
	case sdk.BackendShm:
		r.endpoint = "ipc://" + filepath.Join(m.cfg.Dir, senderSocketName(id))
	case sdk.BackendZMQ:
		r.endpoint = "tcp://" + m.cfg.ZMQHost + ":*"
	case sdk.BackendCUDA:
		if m.gpu == nil {
			return "", fmt.Errorf("transfer: open sender room %d: %w", id, errNoGPU)
		}
		r.endpoint = "ipc://" + filepath.Join(m.cfg.Dir, senderSocketName(id))
	default:
		return "", fmt.Errorf("transfer: open sender room %d: unknown backend %q", id, backend)
	}
	if err := m.addRoom(r); err != nil {
		return "", err
	}
	if err := m.call(func(o *owner) error { return o.openSender(r) }); err != nil {
		if !errors.Is(err, ErrRemoved) {
			err = fmt.Errorf("transfer: open sender room %d: %w", id, fdErr(err))
		}
		return "", errors.Join(err, m.Remove(id))
	}
	m.mu.Lock()
	ep := r.endpoint // the bound one
	m.mu.Unlock()
	m.log.Debug("room opened", "room", id, "role", Sender, "backend", backend, "endpoint", ep)
	return ep, nil
}

// OpenReceiver opens the receiver side of a room: it allocates one
// shared-memory segment holding a buffer per spec, binds the status socket
// and sends the descriptor to senderEndpoint (the sender side must be open
// already). If it fails, the room is removed and its id stays used.
func (m *Manager) OpenReceiver(id uint64, senderEndpoint string, specs []tensor.Spec) (err error) {
	return m.OpenReceiverWith(id, sdk.BackendShm, senderEndpoint, specs)
}

// OpenReceiverWith is OpenReceiver for a room of the given backend. A zmq
// room's buffers are private memory that the socket owner receives the
// data into, and its status socket binds tcp://ZMQHost on a port the
// system picks. A room opened by OpenStandby is armed instead: its
// buffers are allocated and its descriptor is sent over the connection
// it has made (backend and senderEndpoint must be the ones it stands by
// with).
func (m *Manager) OpenReceiverWith(id uint64, backend sdk.Backend, senderEndpoint string, specs []tensor.Spec) (err error) {
	defer func() {
		if err != nil && !isSentinel(err) {
			err = fmt.Errorf("transfer: open receiver room %d: %w", id, fdErr(err))
		}
	}()
	if err := checkEndpoint(senderEndpoint); err != nil {
		return fmt.Errorf("sender %w", err)
	}
	if err := checkSpecs(specs); err != nil {
		return err
	}
	m.mu.Lock()
	r := m.rooms[id]
	if r != nil && r.standby {
		m.mu.Unlock()
		return m.arm(r, backend, senderEndpoint, specs)
	}
	err = m.checkOpenLocked(id) // again in addRoom; this spares the segment
	m.mu.Unlock()
	if err != nil {
		return err
	}
	gen := m.nextGen.Add(1)
	r = newRoom(id, Receiver)
	r.gen, r.backend = gen, backend
	if r.endpoint, err = m.receiverEndpoint(id, gen, backend); err != nil {
		return err
	}
	in, err := m.inputMemory(id, gen, backend, specs)
	if err != nil {
		return err
	}
	r.setInputs(in)
	if err := m.addRoom(r); err != nil {
		return errors.Join(err, m.retire(in.seg, false))
	}
	if err := m.call(func(o *owner) error { return o.openReceiver(r, senderEndpoint, in.frame) }); err != nil {
		return errors.Join(err, m.Remove(id))
	}
	m.log.Debug("room opened", "room", id, "role", Receiver, "generation", gen, "segment", in.segName, "bytes", in.seg.size, "reused", in.reused)
	return nil
}

// OpenStandby opens the receiver side of a room before its request is
// known: it binds the status socket and connects to the sender's room
// socket at senderEndpoint, so that the connection is made ahead of
// time, but it allocates no buffer and sends no descriptor. The room is
// Bootstrapping until OpenReceiverWith, with the same backend and
// endpoint, arms it; frames that come before are dropped. It is removed
// like any other room. If it fails, the room is removed and its id stays
// used.
func (m *Manager) OpenStandby(id uint64, backend sdk.Backend, senderEndpoint string) (err error) {
	defer func() {
		if err != nil && !isSentinel(err) {
			err = fmt.Errorf("transfer: open standby receiver room %d: %w", id, fdErr(err))
		}
	}()
	if err := checkEndpoint(senderEndpoint); err != nil {
		return fmt.Errorf("sender %w", err)
	}
	if backend == sdk.BackendCUDA && m.gpu == nil {
		return errNoGPU
	}
	gen := m.nextGen.Add(1)
	r := newRoom(id, Receiver)
	r.gen, r.backend, r.standby, r.standbyPeer = gen, backend, true, senderEndpoint
	if r.endpoint, err = m.receiverEndpoint(id, gen, backend); err != nil {
		return err
	}
	if err := m.addRoom(r); err != nil {
		return err
	}
	if err := m.call(func(o *owner) error { return o.openStandby(r, senderEndpoint) }); err != nil {
		return errors.Join(err, m.Remove(id))
	}
	m.log.Debug("room opened", "room", id, "role", Receiver, "generation", gen, "standby", true)
	return nil
}

// arm registers the buffers of r, a room opened by OpenStandby, and sends
// its descriptor over the connection r made. If it fails after the
// buffers were allocated, the room is removed.
func (m *Manager) arm(r *room, backend sdk.Backend, senderEndpoint string, specs []tensor.Spec) error {
	if r.backend != backend {
		return fmt.Errorf("the room stands by for a %s hop, not %s", r.backend, backend)
	}
	if r.standbyPeer != senderEndpoint {
		return fmt.Errorf("the room stands by connected to %s, not %s", r.standbyPeer, senderEndpoint)
	}
	in, err := m.inputMemory(r.id, r.gen, backend, specs)
	if err != nil {
		return err
	}
	m.mu.Lock()
	switch {
	case m.rooms[r.id] != r || r.removing:
		err = fmt.Errorf("%w: room %d", ErrRemoved, r.id)
	case !r.standby:
		err = fmt.Errorf("room %d is armed already", r.id)
	default:
		err = roomErrLocked(r) // failed while standing by
	}
	if err == nil {
		r.standby = false
		r.setInputs(in)
	}
	m.mu.Unlock()
	if err != nil {
		return errors.Join(err, m.retire(in.seg, false))
	}
	if err := m.call(func(o *owner) error { return o.arm(r, in.frame) }); err != nil {
		return errors.Join(err, m.Remove(r.id))
	}
	m.log.Debug("standby room armed", "room", r.id, "generation", r.gen, "segment", in.segName, "bytes", in.seg.size, "reused", in.reused)
	return nil
}

// receiverEndpoint is where a receiver side of backend binds its status
// socket.
func (m *Manager) receiverEndpoint(id, gen uint64, backend sdk.Backend) (string, error) {
	switch backend {
	case sdk.BackendShm, sdk.BackendCUDA:
		return "ipc://" + filepath.Join(m.cfg.Dir, receiverSocketName(id, gen)), nil
	case sdk.BackendZMQ:
		return "tcp://" + m.cfg.ZMQHost + ":*", nil
	}
	return "", fmt.Errorf("unknown backend %q", backend)
}

// inputs is the memory a receiver side registers for a request's inputs,
// and how to describe it to the sender.
type inputs struct {
	bufs    []buffer
	at      tables
	seg     *segment
	segName string // shm only
	reused  bool   // the segment came from the pool
	// frame encodes the descriptor for the status socket's bound
	// endpoint (a tcp port is known once bound).
	frame func(statusEndpoint string) ([]byte, error)
}

// inputMemory lays out a buffer per spec and allocates the segment that
// holds them for room id, generation gen: shared memory (shm), private
// memory that the socket owner receives into (zmq), or device memory
// (cuda).
func (m *Manager) inputMemory(id, gen uint64, backend sdk.Backend, specs []tensor.Spec) (in inputs, err error) {
	var need uint64
	if backend == sdk.BackendShm {
		in.bufs, in.at, need, err = shmLayout(specs)
	} else {
		in.bufs, need, err = layout(specs, 0)
	}
	if err != nil {
		return in, err
	}
	switch backend {
	case sdk.BackendShm:
		in.segName = segmentName(m.cfg.Name, id, gen)
		in.seg, in.reused, err = m.pool.get(in.segName, need)
	case sdk.BackendZMQ:
		in.seg, err = privateSegment(max(need, 1))
	case sdk.BackendCUDA:
		in.seg, err = m.deviceSegment(need)
	default:
		err = fmt.Errorf("unknown backend %q", backend)
	}
	if err != nil {
		return in, err
	}
	if backend == sdk.BackendShm {
		ctrlOf(in.seg.data).reset() // a pooled segment holds the last
		// room's progress and its hand-off entries, which a sender that
		// lends nothing does not overwrite.
		clear(in.seg.data[in.at.handoffs:need])
	}
	seg, bufs, at, segName := in.seg, in.bufs, in.at, in.segName
	in.frame = func(statusEndpoint string) ([]byte, error) {
		var handle []byte
		if seg.dev != nil {
			h := seg.dev.Handle()
			handle = h[:]
		}
		b, err := encodeDescriptor(backend, id, gen, statusEndpoint, segName, seg.size, bufs, handle, at)
		if err != nil {
			return nil, fmt.Errorf("encode descriptor: %w", err)
		}
		return b, nil
	}
	return in, nil
}

// setInputs gives r the memory in; Manager.mu is held once r is shared.
func (r *room) setInputs(in inputs) {
	r.bufs, r.seg, r.sumsAt, r.handoffsAt = in.bufs, in.seg, in.at.sums, in.at.handoffs
	if r.backend == sdk.BackendShm {
		r.ctrl = ctrlOf(in.seg.data)
	}
}

// isSentinel reports whether err already carries the "transfer: " prefix
// through one of the package's sentinels.
func isSentinel(err error) bool {
	for _, s := range []error{ErrRoomExists, ErrReleased, ErrNotStarted, ErrRemoved} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func checkSpecs(specs []tensor.Spec) error {
	seen := make(map[string]bool, len(specs))
	for i, s := range specs {
		if s.Name == "" {
			return fmt.Errorf("input %d has no name", i)
		}
		if seen[s.Name] {
			return fmt.Errorf("input %q is declared twice", s.Name)
		}
		seen[s.Name] = true
	}
	if len(specs) > maxBuffers {
		return fmt.Errorf("%d inputs, the limit is %d", len(specs), maxBuffers)
	}
	return nil
}

func (m *Manager) checkOpenLocked(id uint64) error {
	switch m.state {
	case stateNew:
		return ErrNotStarted
	case stateReleased:
		return ErrReleased
	}
	return m.ids.check(id)
}

func (m *Manager) addRoom(r *room) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkOpenLocked(r.id); err != nil {
		return err
	}
	m.ids.add(r.id)
	m.rooms[r.id] = r
	return nil
}

// roomLocked returns the open room id of the given role.
func (m *Manager) roomLocked(id uint64, role Role) (*room, error) {
	r := m.rooms[id]
	switch {
	case m.state == stateNew:
		return nil, ErrNotStarted
	case r == nil && m.state == stateReleased:
		return nil, ErrReleased
	case r == nil:
		return nil, fmt.Errorf("%w %d", ErrUnknownRoom, id)
	}
	if r.role != role {
		return nil, fmt.Errorf("%w %d: it is a %s room", ErrUnknownRoom, id, r.role)
	}
	return r, nil
}

// roomErrLocked returns the error for a room that was removed or failed.
func roomErrLocked(r *room) error {
	if r.removing {
		return fmt.Errorf("%w: room %d", ErrRemoved, r.id)
	}
	if r.status == Failed {
		return fmt.Errorf("%w: room %d: %s", ErrFailed, r.id, r.reason)
	}
	return nil
}

// setStatusLocked applies a legal transition and wakes the room's waiters;
// an illegal one is refused and reported false.
func (m *Manager) setStatusLocked(r *room, to Status, reason string) bool {
	if !r.status.CanTransitionTo(to) {
		return false
	}
	r.status = to
	if to == Failed {
		r.reason = reason
	}
	// Failures are returned to Send/Receive and shown by Rooms; the log
	// only traces them.
	m.log.Debug("room status", "room", r.id, "role", r.role, "status", to, "reason", r.reason)
	r.notify()
	return true
}

// waitLocked waits for the room to change or ctx to end. It is called with
// m.mu held, releases it while waiting and holds it again on return.
func (m *Manager) waitLocked(ctx context.Context, r *room) error {
	ch := r.changed
	m.mu.Unlock()
	defer m.mu.Lock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Send writes tensors into the receiver's buffers of a sender room. It
// waits for the receiver's descriptor (or ctx's end), then the transfer
// worker checks every tensor against its buffer by position (name, dtype,
// shape, length), copies the bytes and syncs Success with their checksums to
// the receiver. It returns nil once the Success frame is queued to the
// receiver; otherwise an error wrapping ErrFailed (with the room's reason),
// ErrRemoved, ErrReleased or ctx's error. A ctx that ends during the copy
// fails the room. Send may be called once per room; tensors must stay
// unchanged until it returns.
func (m *Manager) Send(ctx context.Context, id uint64, tensors []tensor.Tensor) error {
	_, err := m.SendN(ctx, id, tensors)
	return err
}

// SendN is Send, and returns the bytes it wrote into the receiver's
// buffers: those of the outputs the receiver declared.
func (m *Manager) SendN(ctx context.Context, id uint64, tensors []tensor.Tensor) (int64, error) {
	start := time.Now()
	backend, n, err := m.send(ctx, id, tensors)
	if err != nil {
		return 0, err
	}
	m.counters.sent(backend, int64(n), time.Since(start))
	return int64(n), nil
}

// send is Send; it returns the room's backend and the bytes of the
// receiver's buffers.
func (m *Manager) send(ctx context.Context, id uint64, tensors []tensor.Tensor) (sdk.Backend, uint64, error) {
	for i, t := range tensors {
		if err := t.Validate(); err != nil {
			return "", 0, fmt.Errorf("transfer: send room %d: tensor %d: %w", id, i, err)
		}
	}
	m.mu.Lock()
	r, err := m.roomLocked(id, Sender)
	if err != nil {
		m.mu.Unlock()
		return "", 0, err
	}
	if r.sending {
		m.mu.Unlock()
		return "", 0, fmt.Errorf("transfer: send room %d: Send was already called for this room", id)
	}
	r.sending = true
	for r.status == Bootstrapping && !r.removing {
		if err := m.waitLocked(ctx, r); err != nil {
			r.sending = false
			m.mu.Unlock()
			return "", 0, fmt.Errorf("transfer: send room %d: waiting for the receiver's descriptor: %w", id, err)
		}
	}
	if err := roomErrLocked(r); err != nil {
		m.mu.Unlock()
		return "", 0, err
	}
	changed, backend := r.changed, r.backend
	var n uint64
	if r.desc != nil {
		n = totalBytes(r.desc.buffers)
	}
	m.mu.Unlock()

	j := &job{ctx: ctx, r: r, tensors: tensors, done: make(chan error, 1)}
	for {
		select {
		case m.jobs <- j:
			return backend, n, <-j.done
		case <-changed:
			m.mu.Lock()
			err, changed = roomErrLocked(r), r.changed
			m.mu.Unlock()
			if err != nil {
				return "", 0, err
			}
		case <-ctx.Done():
			m.mu.Lock()
			r.sending = false
			m.mu.Unlock()
			return "", 0, fmt.Errorf("transfer: send room %d: waiting for the transfer worker: %w", id, ctx.Err())
		case <-m.quit:
			return "", 0, ErrReleased
		}
	}
}

// Alloc returns a tensor for spec whose bytes lie in a shared-memory
// output segment of this Manager, for a phase to write an output into:
// sent through a fast-path shm room (both processes on this host), it is
// handed to the receiver instead of copied (docs/protocol.md section 5.6).
// Its bytes are not zeroed: write every one. Free it when done, after the
// Send that sends it has returned; Release unmaps every output. A spec of
// no bytes, or one beyond the pool's budget (Config.PoolBytes), gets
// ordinary memory, which Send copies.
func (m *Manager) Alloc(spec tensor.Spec) (tensor.Tensor, error) {
	m.mu.Lock()
	state := m.state
	m.mu.Unlock()
	switch state {
	case stateNew:
		return tensor.Tensor{}, ErrNotStarted
	case stateReleased:
		return tensor.Tensor{}, ErrReleased
	}
	t, err := m.outputs.alloc(spec)
	if err != nil && !isSentinel(err) {
		err = fmt.Errorf("transfer: alloc %s: %w", spec, err)
	}
	return t, err
}

// Written records sum, the checksum the writer computed while it wrote t
// (a tensor from Alloc, written in full: tensor.Chain over its blocks in
// order, or tensor.Checksum), so that Send lends t without reading it
// again; without it, Send hashes t once. Writing t afterwards is a bug
// that a receiver with Config.VerifyHandoffs reports.
func (m *Manager) Written(t tensor.Tensor, sum uint64) error { return m.outputs.written(t, sum) }

// Free gives back a tensor from Alloc: its segment serves a later Alloc
// once the receiver it was lent to, if any, has given it back. Tensors
// not from Alloc are ignored.
func (m *Manager) Free(t tensor.Tensor) { m.outputs.free(t) }

// Receive waits until the sender's Success frame arrived for a receiver
// room (or the room failed, was removed, or ctx ended), verifies every
// tensor against its registered spec and its checksum, and returns the
// tensors. Their Data are views into the shared segment, valid until the
// returned release func is called (even if the room is removed meanwhile);
// call it exactly once when done (later calls do nothing). A verification
// failure fails the room with a reason naming the tensor. Receive may be
// called again after success; each call returns its own release func.
//
// A Receive waiting on a shm room while the sender copies hashes the
// blocks the sender has finished, so that little is left to verify when
// Success comes.
func (m *Manager) Receive(ctx context.Context, id uint64) ([]tensor.Tensor, func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := m.roomLocked(id, Receiver)
	if err != nil {
		return nil, nil, err
	}
	for {
		if err := roomErrLocked(r); err != nil {
			return nil, nil, err
		}
		if r.status != Success && ctx.Err() != nil {
			return nil, nil, fmt.Errorf("transfer: receive room %d: %w", id, ctx.Err())
		}
		if r.status == Success {
			ts, done, err := m.leaseLocked(r)
			if err == nil {
				m.counters.received(r.backend, tensor.TotalBytes(ts))
			}
			return ts, done, err
		}
		if !r.verifying && (r.final != nil || r.copying() && ctx.Err() == nil) {
			m.verifyLocked(ctx, r)
			continue
		}
		if err := m.waitLocked(ctx, r); err != nil {
			return nil, nil, fmt.Errorf("transfer: receive room %d: %w", id, err)
		}
	}
}

// beforeDone, when set, is called by a verifying Receive after it found
// the control block's done word unset and before it looks at progress: a
// test sets done there. Nil in production.
var beforeDone func(room uint64)

// maxSleep bounds one sleep on a room's control block. Every change wakes
// the sleeper at once; this only limits what a sender that tampers with
// the control block can make it miss. (A variable: a test raises it to an
// hour, so that a lost wake hangs.)
var maxSleep = 100 * time.Millisecond

// verifyLocked hashes the room's buffers, with m.mu released meanwhile:
// while the sender copies, the blocks it reports done, sleeping on the
// control block in between; once the Success frame is there, the rest, and
// then it moves the room to Success or Failed. It returns early when the
// room fails or is removed or ctx ends.
func (m *Manager) verifyLocked(ctx context.Context, r *room) {
	data, ok := r.seg.acquire()
	if !ok {
		return // the room is being removed
	}
	r.verifying = true
	stop := context.AfterFunc(ctx, func() {
		m.mu.Lock()
		r.notify()
		m.mu.Unlock()
	})
	bufs, total := r.bufs, totalBytes(r.bufs)
	var err error
	viaDone := false // the sender ended the room in the control block
	for r.final == nil && r.copying() && !r.removing && ctx.Err() == nil {
		seen := r.ctrl.seq.Load()
		if m.observeLocked(r) {
			r.final = sumsOf(bufs, data[r.sumsAt:])
			r.senderDone, viaDone = true, true
			break
		}
		if beforeDone != nil {
			beforeDone(r.id)
		}
		if limit := min(r.ctrl.progress.Load(), total); limit > r.verify.pos {
			m.mu.Unlock()
			moved := r.verify.advance(bufs, data, limit)
			m.mu.Lock()
			r.hashed = r.verify.pos
			if moved {
				continue
			}
			// progress stops inside a block (the SDKs publish whole
			// blocks): nothing to hash until the sender goes on, so
			// sleep rather than look again at once.
		}
		r.sleeping = true
		m.mu.Unlock()
		r.ctrl.sleep(seen, maxSleep)
		m.mu.Lock()
		r.sleeping = false
	}
	finished := false
	if final := r.final; final != nil && r.status == Transferring && !r.removing {
		m.mu.Unlock()
		var lent []taken
		switch {
		case r.seg.dev != nil:
			err = checkHeaders(bufs, final)
		case r.handoffsAt != 0 && viaDone:
			if lent, err = m.takeHandoffs(bufs, data, r.handoffsAt); err == nil {
				if err = r.verify.finish(bufs, final, data, lent, m.cfg.VerifyHandoffs); err != nil {
					m.giveBack(lent)
					lent = nil
				}
			}
		default:
			err = r.verify.finish(bufs, final, data, nil, false)
		}
		finished = true
		m.mu.Lock()
		if err == nil && viaDone {
			r.lent, r.tookLent = lent, true
			if len(lent) > 0 {
				r.seg.onIdle(func() { m.giveBack(lent) })
			}
		}
		r.hashed = r.verify.pos
	}
	m.mu.Unlock()
	stop()
	if rerr := r.seg.release(); rerr != nil {
		m.log.Error("release segment", "room", r.id, "error", rerr)
	}
	m.mu.Lock()
	r.verifying = false
	switch {
	case !finished: // woken by a change, not by Success: the caller looks again
		r.notify()
	case err != nil:
		m.setStatusLocked(r, Failed, err.Error())
	default:
		if !m.setStatusLocked(r, Success, "") {
			r.notify() // removed meanwhile: wake the other waiters
		}
	}
}

// observeLocked looks at a fast-path receiver room's control block once:
// it moves the room to Transferring once its sender has written there,
// since no Transferring frame will say so, and reports whether the sender
// is done. Acting on that one look of done, a caller never holds a done
// room that is still WaitingForInput (which nothing would finish).
func (m *Manager) observeLocked(r *room) (done bool) {
	if r.sumsAt == 0 || r.removing {
		return false
	}
	done = r.ctrl.done.Load() != 0
	if r.status == WaitingForInput && (done || r.ctrl.progress.Load() != 0) {
		r.movedByCtrl = m.setStatusLocked(r, Transferring, "")
	}
	return done
}

// copying reports whether the sender may be writing a shm room's buffers:
// it is Transferring, or, on the fast path, where no Transferring frame
// comes, WaitingForInput. Manager.mu is held.
func (r *room) copying() bool {
	return r.ctrl != nil && (r.status == Transferring || r.sumsAt != 0 && r.status == WaitingForInput)
}

// fastDone reports whether the sender of a fast-path room has finished
// (the control block's done word): it writes nothing more. Manager.mu is
// held and the room is not being removed (its segment is mapped).
func (r *room) fastDone() bool {
	return r.sumsAt != 0 && r.ctrl.done.Load() != 0
}

// sumsOf reads the fast path's checksum table once: the headers a Success
// frame would carry, the specs and lengths being the buffers' own.
func sumsOf(bufs []buffer, table []byte) []header {
	hs := make([]header, len(bufs))
	for i, b := range bufs {
		hs[i] = header{spec: b.spec, length: b.length, sum: binary.LittleEndian.Uint64(table[8*i:])}
	}
	return hs
}

// leaseLocked returns views of a verified room's tensors and their release.
func (m *Manager) leaseLocked(r *room) ([]tensor.Tensor, func(), error) {
	data, ok := r.seg.acquire()
	if !ok {
		return nil, nil, fmt.Errorf("%w: room %d", ErrRemoved, r.id)
	}
	ts := make([]tensor.Tensor, len(r.bufs))
	for i, b := range r.bufs {
		end := b.offset + b.length
		if r.seg.dev != nil {
			ts[i] = tensor.Tensor{Spec: cloneSpec(b.spec), DevicePtr: r.seg.dev.Ptr() + uintptr(b.offset)}
			continue
		}
		ts[i] = tensor.Tensor{Spec: cloneSpec(b.spec), Data: data[b.offset:end:end]}
	}
	for _, t := range r.lent {
		ts[t.buf].Data = t.view
	}
	var once sync.Once
	release := func() {
		once.Do(func() {
			if err := r.seg.release(); err != nil {
				m.log.Error("release segment", "room", r.id, "error", err)
			}
		})
	}
	return ts, release, nil
}

// Remove removes a room: a non-terminal status becomes Failed "removed",
// waiting Send and Receive calls return an error wrapping ErrRemoved, the
// worker lets go of the room (it aborts between chunks), the owner closes
// the room's sockets and their files are deleted, and the receiver's
// segment is unlinked. When Remove returns, the Manager no longer touches
// the room's buffers or sockets; only outstanding Receive leases keep the
// receiver's mapping until released. Remove is idempotent and returns nil
// for an unknown room; concurrent calls all wait for the removal.
func (m *Manager) Remove(id uint64) error {
	r, already := m.beginRemove(id)
	switch {
	case r == nil:
		return nil
	case already:
		select {
		case <-r.gone:
		case <-m.ownerDone:
			// A RemoveSoon's command that the stopped owner will not
			// run: it closed every socket, the rest is done here.
			m.finishRemove(r, errOwnerStopped)
			<-r.gone
		}
		return nil
	}
	return m.finishRemove(r, m.call(func(o *owner) error { return o.closeRoom(id) }))
}

// RemoveSoon is Remove without the wait, for a side whose removal no one
// waits for (a runtime's own, at the end of a Run): the room fails at
// once and leaves Rooms, as Remove's first step, and the socket owner
// closes its sockets and lets go of its segment after the commands before
// it, a few hundred µs later on a busy host, while the caller goes on.
// Remove and Release wait for it (and end it themselves if the owner
// stopped first); an error is logged.
func (m *Manager) RemoveSoon(id uint64) {
	r, already := m.beginRemove(id)
	if r == nil || already {
		return
	}
	logErr := func(err error) {
		if err != nil {
			m.log.Warn("remove a room", "room", id, "error", err)
		}
	}
	err := m.post(command{fn: func(o *owner) error {
		logErr(m.finishRemove(r, o.closeRoom(id)))
		return nil
	}})
	if err != nil { // the owner stopped: it has closed every socket
		logErr(m.finishRemove(r, err))
	}
}

// beginRemove is a removal's first step: it marks room id removing and
// Failed "removed", wakes its waiters and waits until the worker has let
// go of it. It returns the room (nil if there is none) and whether its
// removal had begun already.
func (m *Manager) beginRemove(id uint64) (r *room, already bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r = m.rooms[id]
	if r == nil {
		// A remove may overtake its room's open (the caller gave up on a
		// slow open): the id is spent, so that the open, when it comes,
		// fails instead of leaving a room nobody removes.
		if m.ids.check(id) == nil {
			m.ids.add(id)
		}
		return nil, false
	}
	if r.removing {
		return r, true
	}
	r.removing = true
	r.abort.Store(true)
	m.setStatusLocked(r, Failed, "removed")
	r.notify()
	for r.busy { // bounded: the worker checks abort between 256 KiB blocks
		ch := r.changed
		m.mu.Unlock()
		<-ch
		m.mu.Lock()
	}
	return r, false
}

// finishRemove ends the removal of r once the owner has closed its
// sockets (closeErr: how that went; errOwnerStopped is no error, a
// stopped owner has closed every socket), whoever comes first: it closes
// what the worker did not take, lets go of the segment and forgets the
// room. It returns the removal's error to the first caller, nil to any
// other.
func (m *Manager) finishRemove(r *room, closeErr error) (err error) {
	r.ended.Do(func() { err = m.endRemove(r, closeErr) })
	return err
}

// endRemove is finishRemove's work, done once.
func (m *Manager) endRemove(r *room, closeErr error) error {
	var errs []error
	if closeErr != nil && !errors.Is(closeErr, errOwnerStopped) {
		errs = append(errs, closeErr)
	}
	m.mu.Lock()
	file := r.file // no worker took it
	r.file = nil
	m.mu.Unlock()
	if file != nil {
		errs = append(errs, closeFd(file.fd))
	}
	if r.peer != nil { // the worker let go of it (busy)
		if err := r.peer.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close the receiver's device memory: %w", err))
		}
	}
	if r.seg != nil {
		// The owner has closed the status socket, so senderDone is final;
		// a fast-path sender that set done writes nothing more either.
		m.mu.Lock()
		done := r.fastDone()
		recyclable := r.senderDone || done
		untaken := done && r.handoffsAt != 0 && !r.tookLent
		m.mu.Unlock()
		if untaken && !m.giveBackUntaken(r.bufs, r.seg.data, r.handoffsAt) {
			recyclable = false
		}
		errs = append(errs, m.retire(r.seg, recyclable))
		// Mappings of lent segments whose files went (a sender that
		// released or died) are not kept past a room's removal.
		m.peers.sweep()
	}
	err := errors.Join(errs...)
	if err != nil {
		err = fmt.Errorf("transfer: remove room %d: %w", r.id, err)
	}
	m.mu.Lock()
	delete(m.rooms, r.id)
	r.removeErr = err
	close(r.gone)
	m.mu.Unlock()
	m.log.Debug("room removed", "room", r.id, "role", r.role)
	return err
}

// Release refuses new rooms (ErrReleased), removes every room, stops the
// transfer worker and the socket owner, and terminates the zmq context. It
// leaves no socket file and no segment behind. Every step is bounded (the
// worker aborts between chunks, the owner never blocks on the network).
//
// The teardown runs to its end whatever ctx does: ctx only bounds how long
// Release waits for it. When ctx ends first, Release returns an error
// saying what had not stopped yet, and the teardown goes on in the
// background; a later Release waits for it and returns its outcome.
// Release is idempotent.
func (m *Manager) Release(ctx context.Context) error {
	m.mu.Lock()
	switch m.state {
	case stateNew:
		m.state = stateReleased
		close(m.released)
	case stateStarted:
		m.state = stateReleased
		ids := make([]uint64, 0, len(m.rooms))
		for id := range m.rooms {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		m.stopping.Store("the rooms")
		// The teardown's goroutine ends with the teardown, which no
		// step of can block for good; m.released tells its end.
		go m.teardown(ids)
	}
	m.mu.Unlock()
	select {
	case <-m.released:
		return m.releaseErr
	default:
	}
	select {
	case <-m.released:
		return m.releaseErr
	case <-ctx.Done():
		return fmt.Errorf("transfer: release: %s did not stop in time; the release goes on in the background: %w", m.stopping.Load(), ctx.Err())
	}
}

// teardown is Release's work: it removes the rooms, stops the goroutines
// in order and frees what Start took, then records the outcome and closes
// m.released.
func (m *Manager) teardown(ids []uint64) {
	var errs []error
	defer func() {
		m.releaseErr = errors.Join(errs...)
		close(m.released)
	}()
	for _, id := range ids {
		errs = append(errs, m.Remove(id))
	}
	close(m.quit)
	if err := m.pool.close(); err != nil {
		errs = append(errs, fmt.Errorf("transfer: release: segment pool: %w", err))
	}
	m.stopping.Store("the transfer worker")
	<-m.workerDone
	m.stopping.Store("the cuda completer")
	<-m.completerDone
	// The worker lends no more: every output segment can go. A receiver
	// that maps one keeps its bytes until it lets go.
	if err := m.outputs.close(); err != nil {
		errs = append(errs, fmt.Errorf("transfer: release: output segments: %w", err))
	}
	m.peers.close()
	m.stopping.Store("the socket owner")
	if err := m.post(command{stop: true}); err != nil && !errors.Is(err, errOwnerStopped) {
		errs = append(errs, err)
	}
	<-m.ownerDone
	m.stopping.Store("the zmq context")
	if err := m.closeWake(); err != nil {
		errs = append(errs, fmt.Errorf("transfer: release: close the wake-up eventfd: %w", err))
	}
	if err := m.zctx.Term(); err != nil {
		errs = append(errs, fmt.Errorf("transfer: release: terminate zmq context: %w", err))
	}
	if m.gpu != nil {
		if err := m.gpu.Close(); err != nil {
			errs = append(errs, fmt.Errorf("transfer: release: cuda device: %w", err))
		}
	}
	m.log.Debug("transfer manager released", "rooms_removed", len(ids), "dropped_frames", m.dropped.Load())
}

// closeWake closes the wake-up eventfd; later wake calls do nothing.
func (m *Manager) closeWake() error {
	m.wakeMu.Lock()
	defer m.wakeMu.Unlock()
	if m.wakeFD < 0 {
		return nil
	}
	err := unix.Close(m.wakeFD)
	m.wakeFD = -1
	return err
}

// retire lets go of a room's segment: into the pool if recyclable and no
// lease is outstanding, otherwise unlinked (and unmapped with its last
// lease).
func (m *Manager) retire(seg *segment, recyclable bool) error {
	recycled, err := seg.retire(recyclable && m.cfg.PoolSegments > 0)
	if recycled {
		err = m.pool.put(seg)
	}
	return err
}

// maxSockets is the zmq socket limit Start sets: Config.MaxSockets, or
// the process's soft file-descriptor limit (every socket needs at least
// one descriptor), within libzmq's bounds.
func (m *Manager) maxSockets() int {
	if m.cfg.MaxSockets > 0 {
		return m.cfg.MaxSockets
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 1024 {
		return 1023 // libzmq's default
	}
	return int(min(lim.Cur, 1<<16-1))
}

// usedIDs remembers which room ids a Manager has seen, in bounded memory:
// every id below low counts as used, and set holds the used ids at or
// above it. Room ids come from the supervisor's counter, so they increase
// (with some reordering between concurrent requests); when set grows past
// maxUsedIDs, its lower half is folded into low. An id that arrives more
// than about maxUsedIDs/2 opens after larger ids is refused as used.
type usedIDs struct {
	low uint64
	set map[uint64]struct{}
}

const maxUsedIDs = 4096

func (u *usedIDs) check(id uint64) error {
	if id < u.low {
		return fmt.Errorf("%w: %d (room ids are never reused; this manager no longer accepts ids below %d)", ErrRoomExists, id, u.low)
	}
	if _, ok := u.set[id]; ok {
		return fmt.Errorf("%w: %d (room ids are never reused)", ErrRoomExists, id)
	}
	return nil
}

func (u *usedIDs) add(id uint64) {
	u.set[id] = struct{}{}
	if len(u.set) <= maxUsedIDs {
		return
	}
	ids := make([]uint64, 0, len(u.set))
	for x := range u.set {
		ids = append(ids, x)
	}
	slices.Sort(ids)
	u.low = ids[len(ids)/2]
	set := make(map[uint64]struct{}, maxUsedIDs)
	for _, x := range ids[len(ids)/2:] {
		set[x] = struct{}{}
	}
	u.set = set
}

// Backend returns the backend of an open room.
func (m *Manager) Backend(id uint64) (sdk.Backend, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.rooms[id]
	if r == nil {
		return "", fmt.Errorf("%w: room %d", ErrUnknownRoom, id)
	}
	return r.backend, nil
}

// Drained reports whether room id is a sender side whose Send succeeded
// on the fast path (protocol.md section 5.5): it ended in the receiver's
// control block and sent no frame, so nothing of it can still be queued
// on a socket, and removing the side now loses nothing its receiver
// waits for. False for an unknown room and for every other case.
func (m *Manager) Drained(id uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.rooms[id]
	return r != nil && r.drained
}

// SenderLeft reports whether room id is a receiver side that its sender
// has let go of: the sender wrote done in the control block (the fast
// path, protocol.md section 5.5), after which it writes nothing in the
// segment, and then closed its side (its room socket went away, seen
// through the connection that carried the descriptor). Removing such a
// side now keeps the order of invariant 1 (sender first) without the
// supervisor's RemoveRoom. False for an unknown room and every other
// case: a frame path, a sender still open, a failed room.
//
// The sender's leaving is an event on the room's monitor, which the
// socket owner reads when it runs, and on one CPU a Run that computed
// until now has kept it from running since the event came. So when
// nothing but that event is missing, the owner reads the room's monitor
// first: a hand-off inside this process, where the supervisor's
// RemoveRoom would be a round trip on the request's path.
func (m *Manager) SenderLeft(id uint64) bool {
	left, unread := m.senderLeft(id)
	if left || !unread {
		return left
	}
	if err := m.call(func(o *owner) error { o.readMonitor(id); return nil }); err != nil {
		return false
	}
	left, _ = m.senderLeft(id)
	return left
}

// senderLeft is SenderLeft as far as the owner has read the room's
// monitor; unread reports that only the sender's leaving is missing.
func (m *Manager) senderLeft(id uint64) (left, unread bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.rooms[id]
	if r == nil || r.role != Receiver || r.removing || !r.fastDone() || r.status == Failed {
		return false, false
	}
	return r.senderLeft, !r.senderLeft
}

// Status returns a room's status and, when Failed, its reason.
func (m *Manager) Status(id uint64) (Status, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.rooms[id]
	if r == nil {
		return 0, "", fmt.Errorf("%w %d", ErrUnknownRoom, id)
	}
	m.observeLocked(r)
	return r.status, r.reason, nil
}

// Rooms returns a snapshot of every open room, sorted by room id; a room
// being removed is not open.
func (m *Manager) Rooms() []RoomInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	infos := make([]RoomInfo, 0, len(m.rooms))
	for _, r := range m.rooms {
		if r.removing {
			continue
		}
		m.observeLocked(r)
		infos = append(infos, RoomInfo{Room: r.id, Role: r.role, Status: r.status, Reason: r.reason})
	}
	slices.SortFunc(infos, func(a, b RoomInfo) int {
		switch {
		case a.Room < b.Room:
			return -1
		case a.Room > b.Room:
			return 1
		}
		return 0
	})
	return infos
}

// Dropped returns how many frames from the network were dropped: garbage,
// wrong version, room or generation, duplicates, and frames for rooms that
// are gone.
func (m *Manager) Dropped() uint64 { return m.dropped.Load() }

// drop counts a dropped frame.
func (m *Manager) drop(id uint64, why string) {
	m.dropped.Add(1)
	m.log.Debug("frame dropped", "room", id, "why", why)
}

package transfer

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/proto/phasedv1"
)

// errOwnerStopped is returned by post and call once the socket owner has
// exited (after Release, or a fatal poll error).
var errOwnerStopped = errors.New("the socket owner has stopped")

// command is work for the socket owner. fn runs on the owner goroutine;
// stop ends it. A command with a reply channel (capacity 1) gets fn's
// error on it.
type command struct {
	fn    func(o *owner) error
	stop  bool
	reply chan error
}

// call runs fn on the socket owner and returns its error.
func (m *Manager) call(fn func(o *owner) error) error {
	return m.post(command{fn: fn, reply: make(chan error, 1)})
}

// post hands c to the socket owner, wakes it and, if c has a reply
// channel, waits for the answer. The owner never blocks on the network, so
// the wait is short.
func (m *Manager) post(c command) error {
	select {
	case m.cmds <- c:
	case <-m.ownerDone:
		return errOwnerStopped
	}
	m.wake()
	if c.reply == nil {
		return nil
	}
	select {
	case err := <-c.reply:
		return err
	case <-m.ownerDone:
		select {
		case err := <-c.reply: // answered just before it stopped
			return err
		default:
			return errOwnerStopped
		}
	}
}

// wake adds one to the owner's eventfd, which its epoll set watches. It
// never blocks; a counter that is already non-zero means wake-ups are
// pending.
func (m *Manager) wake() {
	m.wakeMu.Lock()
	defer m.wakeMu.Unlock()
	if m.wakeFD < 0 {
		return
	}
	one := [8]byte{1}
	if _, err := unix.Write(m.wakeFD, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
		m.log.Error("wake the socket owner", "error", err)
	}
}

func isEAGAIN(err error) bool { return zmq.AsErrno(err) == zmq.Errno(syscall.EAGAIN) }

// roomSocks are the sockets of one room.
type roomSocks struct {
	role    Role
	backend sdk.Backend
	pull    *zmq.Socket // bound: sender's room socket, receiver's status socket
	path    string      // pull's socket file
	push    *zmq.Socket // connected: to the sender (receiver), to the status socket (sender); may be nil
	peer    string      // the endpoint push connects to

	// mon receives push's connect and disconnect events (libzmq socket
	// monitor over an inproc PAIR); nil with push.
	mon *zmq.Socket
	// peerTimer is armed while push is disconnected: if the peer does not
	// come back within Config.PeerTimeout, the room fails. timerSeq tells
	// a stale firing from the current one.
	peerTimer *time.Timer
	timerSeq  uint64
	// curve: push is a CURVE client (Config.Curve, a tcp peer), whose
	// connection is up once its handshake succeeded, not when TCP
	// connects. handshake says why the last handshake of push failed,
	// for the peer timeout's reason; "" once one succeeds.
	curve     bool
	handshake string
}

// sockRef says which room a polled socket belongs to, and whether it is
// the room's monitor socket, or no room's: the ZAP handler's.
type sockRef struct {
	id      uint64
	monitor bool
	zap     bool
}

// owner is the state of the socket-owner goroutine. Only that goroutine
// touches it and the sockets in it.
//
// It waits in epoll on the ZMQ_FD of every socket it reads (rooms' PULL
// sockets and monitor PAIRs) and on the manager's eventfd, so a wake-up
// costs the same whether 0 or 10,000 rooms are open (zmq_poll would look
// at every socket each time). ZMQ_FD is edge-triggered: a socket is read
// until EAGAIN, or, when one burst was not enough, kept in pending and
// read again before the owner sleeps.
type owner struct {
	m  *Manager
	ep int // epoll fd, non-blocking
	// epoll is ep in Go's network poller: the owner waits for ep to be
	// readable there (parked, holding no thread in a system call), then
	// reads the events without blocking. A goroutine blocked in
	// epoll_wait itself keeps its P in a system call, which sysmon
	// retakes every 10 ms, and each retake sets sysmon polling every
	// 20 µs again: thousands of wake-ups a second in every plugin
	// process (docs/benchmarks.md).
	epoll   syscall.RawConn
	file    *os.File // owns ep
	rooms   map[uint64]*roomSocks
	byFD    map[int32]watched
	pending []int32
	monSeq  uint64 // makes monitor endpoints unique in the context
	// zap is the ZAP handler's ROUTER socket, with Config.Curve (see
	// curve.go); zapKey is the public key it admits, 32 bytes.
	zap    *zmq.Socket
	zapKey string
}

// watched is a socket in the epoll set and the room it belongs to.
type watched struct {
	s   *zmq.Socket
	ref sockRef
}

func newOwner(m *Manager) (*owner, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	if err := unix.SetNonblock(ep, true); err != nil {
		return nil, errors.Join(fmt.Errorf("epoll: %w", err), unix.Close(ep))
	}
	file := os.NewFile(uintptr(ep), "epoll")
	rc, err := file.SyscallConn()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("epoll: %w", err), file.Close())
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(m.wakeFD)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, m.wakeFD, &ev); err != nil {
		return nil, errors.Join(fmt.Errorf("epoll: watch the wake-up eventfd: %w", err), file.Close())
	}
	return &owner{m: m, ep: ep, epoll: rc, file: file, rooms: make(map[uint64]*roomSocks), byFD: make(map[int32]watched)}, nil
}

// wait returns the ready events: at once when some sockets are pending,
// else once there are some, parked in Go's network poller meanwhile.
func (o *owner) wait(events []unix.EpollEvent) (n int, err error) {
	poll := func() {
		for {
			n, err = unix.EpollWait(o.ep, events, 0)
			if !errors.Is(err, unix.EINTR) {
				return
			}
		}
	}
	if len(o.pending) > 0 {
		poll()
		return n, err
	}
	if rerr := o.epoll.Read(func(uintptr) bool {
		poll()
		return n > 0 || err != nil // false: wait until ep is readable
	}); rerr != nil {
		return 0, rerr
	}
	return n, err
}

// watch adds s to the epoll set, and to pending: frames that arrived
// before it was watched raise no edge.
func (o *owner) watch(s *zmq.Socket, ref sockRef) error {
	fd, err := s.GetFd()
	if err != nil {
		return fmt.Errorf("socket fd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(o.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll: watch socket: %w", err)
	}
	o.byFD[int32(fd)] = watched{s: s, ref: ref}
	o.pending = append(o.pending, int32(fd))
	return nil
}

// unwatch removes s from the epoll set; call it before closing s.
func (o *owner) unwatch(s *zmq.Socket) error {
	fd, err := s.GetFd()
	if err != nil {
		return fmt.Errorf("socket fd: %w", err)
	}
	if _, ok := o.byFD[int32(fd)]; !ok {
		return nil // never watched: its room failed to open
	}
	delete(o.byFD, int32(fd))
	if err := unix.EpollCtl(o.ep, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return fmt.Errorf("epoll: unwatch socket: %w", err)
	}
	return nil
}

// run is the owner goroutine: it waits, with no timeout, for a frame on a
// room socket or a wake-up, and handles both.
func (o *owner) run() {
	defer close(o.m.ownerDone)
	defer o.file.Close()
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := o.wait(events)
		if err != nil {
			o.m.log.Error("socket owner stopped: epoll failed", "error", err)
			o.closeAll()
			return
		}
		ready := o.pending
		o.pending = nil
		woken := false
		for _, ev := range events[:n] {
			if int(ev.Fd) == o.m.wakeFD {
				woken = true
				continue
			}
			ready = append(ready, ev.Fd)
		}
		for _, fd := range ready {
			w, ok := o.byFD[fd]
			if !ok {
				continue // closed meanwhile
			}
			var more bool
			switch {
			case w.ref.zap:
				more = o.drainZAP()
			case w.ref.monitor:
				more = o.drainMonitor(w.ref.id, w.s)
			default:
				more = o.drain(w.ref.id, w.s)
			}
			if more {
				o.pending = append(o.pending, fd)
			}
		}
		if woken && o.runCommands() {
			o.closeAll()
			return
		}
	}
}

// runCommands resets the eventfd, then runs every queued command. It
// reports whether a stop command was seen.
func (o *owner) runCommands() bool {
	var buf [8]byte
	if _, err := unix.Read(o.m.wakeFD, buf[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
		o.m.log.Error("read the wake-up eventfd", "error", err)
	}
	for {
		select {
		case c := <-o.m.cmds:
			if c.stop {
				return true
			}
			err := c.fn(o)
			if c.reply != nil {
				c.reply <- err
			}
		default:
			return false
		}
	}
}

// maxBurst bounds the frames read from one socket per poll, so that a
// flooding peer cannot starve the others.
const maxBurst = 64

// drain reads up to maxBurst frames from a room socket; it reports
// whether more may be waiting.
func (o *owner) drain(id uint64, s *zmq.Socket) bool {
	rs := o.rooms[id]
	if rs == nil {
		return false
	}
	for range maxBurst {
		b, err := s.RecvBytes(zmq.DONTWAIT)
		if err != nil {
			if !isEAGAIN(err) {
				o.m.log.Error("receive", "room", id, "error", err)
			}
			return false
		}
		more, _ := s.GetRcvmore()
		switch {
		case more && rs.role == Receiver:
			o.handleData(id, s, b)
		case more:
			o.discard(s)
			o.m.drop(id, "a message of several parts on a room socket")
		case rs.role == Sender:
			o.handleDescriptor(id, b)
		default:
			o.handleStatus(id, b)
		}
	}
	return true
}

// discard reads and drops the remaining parts of a message, into no
// buffer.
func (o *owner) discard(s *zmq.Socket) {
	for {
		if more, err := s.GetRcvmore(); err != nil || !more {
			return
		}
		if _, err := recvInto(s, nil, zmq.DONTWAIT); err != nil {
			return
		}
	}
}

// handleData receives a zmq room's data message, whose first part, head,
// was read: the second part goes straight into the receiver's buffer that
// holds the header's offset, and must fit in it. A message that is not for
// this room and generation, or comes while the room is not Transferring,
// is dropped; one that would overflow its buffer fails the room.
func (o *owner) handleData(id uint64, s *zmq.Socket, head []byte) {
	m := o.m
	h, ok := parseDataHeader(head)
	m.mu.Lock()
	r := m.rooms[id]
	var dst []byte
	var why string
	switch {
	case !ok:
		why = "a message of several parts that is not data"
	case h.room != id:
		why = fmt.Sprintf("data for room %d", h.room)
	case r == nil || r.removing:
		why = "data for a room that is closing"
	case r.backend != sdk.BackendZMQ:
		why = "data on a shm room"
	case h.generation != r.gen:
		why = fmt.Sprintf("data of generation %d, the room has %d", h.generation, r.gen)
	case r.status != Transferring:
		why = fmt.Sprintf("data while the room is %s", r.status)
	case r.final != nil || r.verifying || r.senderDone:
		// After Success, Receive may be verifying or handing out the
		// bytes: nothing may change them any more.
		why = "data after the sender's Success"
	default:
		if dst = locateData(r.bufs, r.seg.data, h.offset); dst == nil {
			why = fmt.Sprintf("data at offset %d, in no buffer", h.offset)
		}
	}
	m.mu.Unlock()
	if dst == nil {
		o.discard(s)
		m.drop(id, why)
		return
	}
	// The room stays open while the owner is here (Remove closes its
	// sockets through the owner first), so dst stays mapped.
	n, err := recvInto(s, dst, zmq.DONTWAIT)
	var fail string
	switch {
	case err != nil:
		fail = fmt.Sprintf("receive data: %v", err)
	case n > len(dst):
		fail = fmt.Sprintf("a data message of %d bytes at offset %d overflows its buffer (%d bytes left)", n, h.offset, len(dst))
	}
	if more, _ := s.GetRcvmore(); more && fail == "" {
		fail = "a data message of more than two parts"
	}
	o.discard(s)
	if fail != "" {
		m.mu.Lock()
		if r := m.rooms[id]; r != nil && m.setStatusLocked(r, Failed, fail) {
			r.notify()
		}
		m.mu.Unlock()
	}
}

// dataPart is some bytes of a tensor and where they go in the receiver's
// buffers.
type dataPart struct {
	offset uint64
	b      []byte
}

// streamData queues parts on a zmq room's connection to the receiver, each
// as a data message: a header that says where it goes, then the bytes.
// libzmq copies each part before sendFrom returns.
func (o *owner) streamData(id, gen uint64, parts []dataPart) error {
	rs := o.rooms[id]
	if rs == nil || rs.push == nil {
		return fmt.Errorf("room %d has no connection to its receiver", id)
	}
	for _, p := range parts {
		head := dataHeader{room: id, generation: gen, offset: p.offset}.encode()
		if err := sendFrom(rs.push, head, zmq.SNDMORE|zmq.DONTWAIT); err != nil {
			return fmt.Errorf("send data header: %w", err)
		}
		if err := sendFrom(rs.push, p.b, zmq.DONTWAIT); err != nil {
			return fmt.Errorf("send data: %w", err)
		}
	}
	return nil
}

// live reports whether r is still open and not being removed. A Remove
// that starts after this check posts its close command after ours, so
// sockets opened now are closed by it.
func (o *owner) live(r *room) bool {
	o.m.mu.Lock()
	defer o.m.mu.Unlock()
	return o.m.rooms[r.id] == r && !r.removing
}

func newSocket(zctx *zmq.Context, t zmq.Type) (*zmq.Socket, error) {
	s, err := zctx.NewSocket(t)
	if err != nil {
		return nil, fmt.Errorf("new %s socket: %w", t, err)
	}
	if err := s.SetLinger(0); err != nil {
		return nil, errors.Join(fmt.Errorf("set linger: %w", err), s.Close())
	}
	if t == zmq.PULL {
		if err := s.SetMaxmsgsize(maxFrameSize); err != nil {
			return nil, errors.Join(fmt.Errorf("set max message size: %w", err), s.Close())
		}
	}
	return s, nil
}

// bind creates a PULL socket bound to r's endpoint (ipc://PATH, or
// tcp://HOST:* for a zmq room, whose bound endpoint then replaces r's).
// A zmq receiver's status socket also takes data messages of up to
// zmqChunk bytes.
func (o *owner) bind(r *room) (*zmq.Socket, error) {
	s, err := newSocket(o.m.zctx, zmq.PULL)
	if err != nil {
		return nil, err
	}
	limit := int64(maxFrameSize) // newSocket's
	if r.backend == sdk.BackendZMQ && r.role == Receiver {
		if err := checkRaw(s); err != nil {
			return nil, errors.Join(err, s.Close())
		}
		limit = zmqChunk
	}
	if keys := o.m.cfg.Curve; keys != nil && strings.HasPrefix(r.endpoint, "tcp://") {
		if err := curveServer(s, keys); err != nil {
			return nil, errors.Join(err, s.Close())
		}
		limit += curveOverhead
	}
	if limit != maxFrameSize {
		if err := s.SetMaxmsgsize(limit); err != nil {
			return nil, errors.Join(fmt.Errorf("set max message size: %w", err), s.Close())
		}
	}
	if err := s.Bind(r.endpoint); err != nil {
		return nil, errors.Join(fmt.Errorf("bind %s: %w", r.endpoint, err), s.Close())
	}
	if strings.HasPrefix(r.endpoint, "tcp://") {
		ep, err := s.GetLastEndpoint()
		if err != nil {
			return nil, errors.Join(fmt.Errorf("bound endpoint of %s: %w", r.endpoint, err), s.Close())
		}
		o.m.mu.Lock()
		r.endpoint = ep
		o.m.mu.Unlock()
	}
	return s, nil
}

// connect creates, for room rs, a PUSH socket connected to endpoint and
// the PAIR socket that receives its monitor's connect and disconnect
// events, and registers both with the room. Messages queue until the
// connection is up, so a send right after connect does not block.
func (o *owner) connect(id uint64, rs *roomSocks, endpoint string) error {
	s, err := newSocket(o.m.zctx, zmq.PUSH)
	if err != nil {
		return err
	}
	if rs.backend == sdk.BackendZMQ && rs.role == Sender {
		if err := checkRaw(s); err != nil {
			return errors.Join(err, s.Close())
		}
		// The data of a Send is queued window by window (the owner never
		// blocks): no high-water mark on the connection that carries it.
		if err := s.SetSndhwm(0); err != nil {
			return errors.Join(fmt.Errorf("set send high-water mark: %w", err), s.Close())
		}
	}
	events := zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
	if strings.HasPrefix(endpoint, "tcp://") {
		// A failed handshake says why in the peer timeout's reason:
		// CURVE on one end only, or another key.
		events |= handshakeFailed
		if keys := o.m.cfg.Curve; keys != nil {
			if err := curveClient(s, keys.Public, o.m.clientKeys); err != nil {
				return errors.Join(err, s.Close())
			}
			rs.curve = true
			events |= zmq.EVENT_HANDSHAKE_SUCCEEDED
		}
	}
	// The monitor first, so that no event is missed; the PAIR connects to
	// it before the PUSH connects to the peer (inproc needs the bind first).
	o.monSeq++
	addr := "inproc://phased-transfer-monitor-" + strconv.FormatUint(o.monSeq, 10)
	if err := s.Monitor(addr, events); err != nil {
		return errors.Join(fmt.Errorf("monitor the connection to %s: %w", endpoint, err), s.Close())
	}
	mon, err := newSocket(o.m.zctx, zmq.PAIR)
	if err != nil {
		return errors.Join(err, s.Monitor("", 0), s.Close())
	}
	if err := mon.Connect(addr); err != nil {
		return errors.Join(fmt.Errorf("connect %s: %w", addr, err), s.Monitor("", 0), mon.Close(), s.Close())
	}
	rs.push, rs.mon, rs.peer = s, mon, endpoint
	if err := o.watch(mon, sockRef{id: id, monitor: true}); err != nil {
		return err // closeRoom closes both
	}
	if err := s.Connect(endpoint); err != nil {
		return fmt.Errorf("connect %s: %w", endpoint, err) // closeRoom closes both
	}
	return nil
}

func (o *owner) register(id uint64, rs *roomSocks) error {
	o.rooms[id] = rs
	return o.watch(rs.pull, sockRef{id: id})
}

// drainMonitor reads the connect and disconnect events of a room's PUSH
// socket. A disconnect arms the peer timer, unless the room no longer
// needs its peer; a (re)connect disarms it.
func (o *owner) drainMonitor(id uint64, s *zmq.Socket) bool {
	rs := o.rooms[id]
	for range maxBurst {
		ev, _, value, err := s.RecvEvent(zmq.DONTWAIT)
		if err != nil {
			if !isEAGAIN(err) {
				o.m.log.Error("receive monitor event", "room", id, "error", err)
			}
			return false
		}
		if rs == nil {
			continue
		}
		switch {
		case ev&handshakeFailed != 0:
			// A disconnect follows, and libzmq may try again: said once.
			if why := handshakeFailure(ev, value, rs.curve); why != rs.handshake {
				rs.handshake = why
				o.m.log.Debug("handshake failed", "room", id, "peer", rs.peer, "why", why)
			}
			continue
		case ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
			rs.handshake = ""
			ev = zmq.EVENT_CONNECTED
		case ev == zmq.EVENT_CONNECTED && rs.curve:
			continue // TCP is up, CURVE is not yet
		}
		if rs.role == Receiver {
			o.m.mu.Lock()
			if r := o.m.rooms[id]; r != nil {
				r.senderLeft = ev == zmq.EVENT_DISCONNECTED
				r.connected = r.connected || ev == zmq.EVENT_CONNECTED
			}
			o.m.mu.Unlock()
		}
		switch ev {
		case zmq.EVENT_CONNECTED:
			o.disarm(rs)
		case zmq.EVENT_DISCONNECTED:
			if rs.peerTimer == nil && o.needsPeer(id) {
				o.m.log.Debug("peer disconnected", "room", id, "peer", rs.peer, "timeout", o.m.cfg.PeerTimeout)
				rs.timerSeq++
				seq, m := rs.timerSeq, o.m
				rs.peerTimer = time.AfterFunc(m.cfg.PeerTimeout, func() {
					// No reply: a stopped owner has closed the room.
					_ = m.post(command{fn: func(o *owner) error { o.peerTimedOut(id, seq); return nil }})
				})
			}
		}
	}
	return true
}

// readMonitor reads room id's monitor events now, as when its socket is
// ready.
func (o *owner) readMonitor(id uint64) {
	rs := o.rooms[id]
	if rs == nil || rs.mon == nil {
		return
	}
	if o.drainMonitor(id, rs.mon) {
		if fd, err := rs.mon.GetFd(); err == nil {
			o.pending = append(o.pending, int32(fd))
		}
	}
}

func (o *owner) disarm(rs *roomSocks) {
	if rs.peerTimer != nil {
		rs.peerTimer.Stop()
		rs.peerTimer = nil
		rs.timerSeq++
	}
}

// needsPeer reports whether room id still waits on its peer: it is open,
// not terminal, and (receiver) its Success frame has not arrived.
func (o *owner) needsPeer(id uint64) bool {
	o.m.mu.Lock()
	defer o.m.mu.Unlock()
	r := o.m.rooms[id]
	return r != nil && !r.removing && !r.status.Terminal() && r.final == nil && !r.fastDone()
}

// peerTimedOut fails room id if its peer timer seq fired while the peer
// is still away and the room still needs it.
func (o *owner) peerTimedOut(id, seq uint64) {
	rs := o.rooms[id]
	if rs == nil || rs.peerTimer == nil || rs.timerSeq != seq {
		return // reconnected or closed meanwhile
	}
	rs.peerTimer = nil
	m := o.m
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.rooms[id]
	if r == nil || r.removing || r.status.Terminal() || r.final != nil || r.fastDone() {
		return
	}
	peer := Receiver
	if rs.role == Receiver {
		peer = Sender
	}
	reason := fmt.Sprintf("peer timeout: the %s at %s disconnected and did not come back within %v (PeerTimeout)", peer, rs.peer, m.cfg.PeerTimeout)
	if rs.handshake != "" {
		reason = fmt.Sprintf("peer timeout: the handshake with the %s at %s failed (%s) and no connection came up within %v (PeerTimeout)",
			peer, rs.peer, rs.handshake, m.cfg.PeerTimeout)
	}
	r.abort.Store(true) // a copy into a vanished receiver stops between chunks
	m.setStatusLocked(r, Failed, reason)
}

func (o *owner) openSender(r *room) error {
	if !o.live(r) {
		return fmt.Errorf("%w: room %d", ErrRemoved, r.id)
	}
	pull, err := o.bind(r)
	if err != nil {
		return err
	}
	// Registered even on failure, so that closeRoom cleans up.
	return o.register(r.id, &roomSocks{role: Sender, backend: r.backend, pull: pull, path: socketPath(r.endpoint)})
}

// openReceiver binds the room's status socket, connects to the sender and
// sends it the descriptor that frame makes for the bound endpoint.
func (o *owner) openReceiver(r *room, sender string, frame func(statusEndpoint string) ([]byte, error)) error {
	if err := o.openStandby(r, sender); err != nil {
		return err
	}
	return o.arm(r, frame)
}

// openStandby binds the room's status socket and connects to the sender.
func (o *owner) openStandby(r *room, sender string) error {
	if !o.live(r) {
		return fmt.Errorf("%w: room %d", ErrRemoved, r.id)
	}
	pull, err := o.bind(r)
	if err != nil {
		return err
	}
	// Registered at once, so that closeRoom cleans up on any failure below.
	rs := &roomSocks{role: Receiver, backend: r.backend, pull: pull, path: socketPath(r.endpoint)}
	if err := o.register(r.id, rs); err != nil {
		return err
	}
	return o.connect(r.id, rs, sender)
}

// arm sends the descriptor that frame makes for the room's bound status
// endpoint to the sender, over the connection openStandby made, and moves
// the room to WaitingForInput.
func (o *owner) arm(r *room, frame func(statusEndpoint string) ([]byte, error)) error {
	if !o.live(r) {
		return fmt.Errorf("%w: room %d", ErrRemoved, r.id)
	}
	rs := o.rooms[r.id]
	if rs == nil || rs.push == nil {
		return fmt.Errorf("room %d has no connection to its sender", r.id)
	}
	descriptor, err := frame(r.endpoint) // the owner bound it: no lock
	if err != nil {
		return err
	}
	if _, err := rs.push.SendBytes(descriptor, zmq.DONTWAIT); err != nil {
		return fmt.Errorf("send descriptor to %s: %w", rs.peer, err)
	}
	o.m.mu.Lock()
	defer o.m.mu.Unlock()
	o.m.setStatusLocked(r, WaitingForInput, "")
	return nil
}

// send queues a frame on the room's connected PUSH socket.
func (o *owner) send(id uint64, frame []byte) error {
	rs := o.rooms[id]
	if rs == nil || rs.push == nil {
		return fmt.Errorf("room %d has no status connection", id)
	}
	if _, err := rs.push.SendBytes(frame, zmq.DONTWAIT); err != nil {
		return fmt.Errorf("send status frame: %w", err)
	}
	return nil
}

// closeRoom closes a room's sockets and deletes its socket file (libzmq
// deletes it too, but later, from its I/O thread). Unknown rooms are fine.
func (o *owner) closeRoom(id uint64) error {
	rs := o.rooms[id]
	if rs == nil {
		return nil
	}
	delete(o.rooms, id)
	o.disarm(rs)
	var errs []error
	if err := o.unwatch(rs.pull); err != nil {
		errs = append(errs, err)
	}
	if err := rs.pull.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close %s: %w", rs.path, err))
	}
	if rs.push != nil {
		if rs.mon != nil {
			// Stop the monitor first: libzmq's I/O thread sends events to
			// the monitor with a blocking send, and a disconnect event
			// from the closing socket after mon is closed would block
			// that thread, and every connection of the context, forever.
			if err := rs.push.Monitor("", 0); err != nil {
				errs = append(errs, fmt.Errorf("stop monitor: %w", err))
			}
		}
		if err := rs.push.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close push socket: %w", err))
		}
	}
	if rs.mon != nil {
		if err := o.unwatch(rs.mon); err != nil {
			errs = append(errs, err)
		}
		if err := rs.mon.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close monitor socket: %w", err))
		}
	}
	if rs.path == "" {
		// A tcp socket has no file.
	} else if err := os.Remove(rs.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove socket file: %w", err))
	}
	return errors.Join(errs...)
}

func (o *owner) closeAll() {
	for id := range o.rooms {
		if err := o.closeRoom(id); err != nil {
			o.m.log.Error("close room sockets", "room", id, "error", err)
		}
	}
	if o.zap != nil { // last: no CURVE server socket is left to ask it
		if err := errors.Join(o.unwatch(o.zap), o.zap.Close()); err != nil {
			o.m.log.Error("close the ZAP handler", "error", err)
		}
		o.zap = nil
	}
}

// socketPath is the socket file of an ipc endpoint, "" for tcp.
func socketPath(endpoint string) string {
	if path, ok := strings.CutPrefix(endpoint, "ipc://"); ok {
		return path
	}
	return ""
}

// handleDescriptor handles a frame on a sender's room socket.
func (o *owner) handleDescriptor(id uint64, b []byte) {
	m := o.m
	var pd phasedv1.Descriptor
	if err := proto.Unmarshal(b, &pd); err != nil {
		m.drop(id, "undecodable descriptor")
		return
	}
	if v := pd.GetVersion(); v != wireVersion {
		m.drop(id, fmt.Sprintf("descriptor version %d", v))
		return
	}
	if pd.GetRoom() != id {
		m.drop(id, fmt.Sprintf("descriptor names room %d", pd.GetRoom()))
		return
	}
	m.mu.Lock()
	r := m.rooms[id]
	expected := r != nil && !r.removing && r.status == Bootstrapping
	m.mu.Unlock()
	if !expected {
		m.drop(id, "unexpected descriptor (duplicate, or the room is closing)")
		return
	}

	d, verr := parseDescriptor(&pd)
	rs := o.rooms[id]
	if verr != nil {
		// Connected first, to tell the receiver why below.
		if checkEndpoint(pd.GetStatusEndpoint()) == nil {
			_ = o.connect(id, rs, pd.GetStatusEndpoint())
		}
	} else if d.backend == sdk.BackendShm {
		// A shm room's segment is opened now, off the Send's path; if
		// that fails, the job opens it again and fails with the reason.
		file, _ := openPeerFile(m.cfg.ShmDir, d.segment, d.segmentSize)
		m.mu.Lock()
		if !r.removing { // else Remove has looked for the file already
			r.file, file = file, nil
		}
		m.mu.Unlock()
		if file != nil {
			if err := closeFd(file.fd); err != nil {
				m.log.Warn("close the receiver's segment", "room", id, "error", err)
			}
		}
	}
	m.mu.Lock()
	if verr == nil {
		r.desc = d
		m.setStatusLocked(r, WaitingForInput, "")
	} else {
		m.setStatusLocked(r, Failed, verr.Error())
	}
	m.mu.Unlock()
	if verr == nil {
		// The Send waiting for this descriptor goes first: on one CPU
		// it would otherwise wait for the connection below, which
		// carries nothing on the fast path until the room ends. No
		// other command runs meanwhile, so nothing sees the room
		// without its connection to the receiver's status socket.
		runtime.Gosched()
		if err := o.connect(id, rs, pd.GetStatusEndpoint()); err != nil {
			m.mu.Lock()
			if r.status.CanTransitionTo(Failed) {
				m.setStatusLocked(r, Failed, fmt.Sprintf("descriptor: status endpoint: %v", fdErr(err)))
			}
			m.mu.Unlock()
		}
	}
	if verr != nil && rs.push != nil {
		// Tell the receiver why, so that its Receive fails now.
		frame, err := encodeStatus(id, pd.GetGeneration(), Failed, verr.Error(), nil)
		if err == nil {
			err = o.send(id, frame)
		}
		if err != nil {
			m.log.Warn("sync Failed to the receiver", "room", id, "error", err)
		}
	}
}

// handleStatus handles a frame on a receiver's status socket.
func (o *owner) handleStatus(id uint64, b []byte) {
	m := o.m
	var f phasedv1.StatusFrame
	if err := proto.Unmarshal(b, &f); err != nil {
		m.drop(id, "undecodable status frame")
		return
	}
	if v := f.GetVersion(); v != wireVersion {
		m.drop(id, fmt.Sprintf("status frame version %d", v))
		return
	}
	if f.GetRoom() != id {
		m.drop(id, fmt.Sprintf("status frame names room %d", f.GetRoom()))
		return
	}
	st := sdk.RoomStatusFromProto(f.GetStatus())
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.rooms[id]
	if r == nil || r.removing {
		m.drop(id, "status frame for a room that is closing")
		return
	}
	if r.standby {
		m.drop(id, "status frame before the room's descriptor was sent")
		return
	}
	if f.GetGeneration() != r.gen {
		m.drop(id, fmt.Sprintf("status frame of generation %d, the room has %d", f.GetGeneration(), r.gen))
		return
	}
	// The room's status moves with Transferring and Failed; Success only
	// records the tensors, and Receive moves the room to Success once it
	// has verified them.
	switch {
	case st == Transferring && r.status.CanTransitionTo(Transferring):
		m.setStatusLocked(r, Transferring, "")
	case st == Transferring && r.status == Transferring && r.movedByCtrl:
		// The control block told first (a sender that publishes progress
		// but sends frames, like the Python SDK's): this frame is not a
		// duplicate, the next one is.
		r.movedByCtrl = false
	case st == Success && r.status == Transferring && r.final == nil:
		r.final = headersFromProto(f.GetTensors())
		r.senderDone = true
		r.notify()
	case st == Failed && r.status.CanTransitionTo(Failed):
		reason := truncate(f.GetReason(), maxReasonLen)
		if reason == "" {
			reason = "no reason given"
		}
		r.senderDone = true
		m.setStatusLocked(r, Failed, "sender: "+reason)
	default:
		m.drop(id, fmt.Sprintf("status frame %s while the room is %s", st, r.status))
	}
}

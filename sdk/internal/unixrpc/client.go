package unixrpc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Pair returns a connected socket pair: host, the supervisor's end (closed
// on exec), and plugin, the end a plugin process inherits (cmd.ExtraFiles,
// with Env naming its number there). The supervisor closes its copy of
// plugin once the process has started.
func Pair() (host, plugin *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("control channel: socket pair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "control channel"), os.NewFile(uintptr(fds[1]), "control channel (plugin)"), nil
}

// Client makes unary calls and opens server streams over the supervisor's
// end of the channel, and passes other streams to the gRPC connection
// beside it. It is a grpc.ClientConnInterface, for the generated
// New…Client functions.
type Client struct {
	wire
	streams grpc.ClientConnInterface

	mu    sync.Mutex
	next  uint64
	calls map[uint64]*pending // the calls waiting for their reply
	err   error               // why the channel is closed; nil while open
	done  chan struct{}       // closed when the reader has stopped
}

// Dial returns a client on host, the supervisor's end of a plugin's
// channel, once the plugin has spoken go-plugin's handshake: nil (and host
// closed) if the plugin wrote no hello frame, which it writes before the
// handshake when it serves the channel. streams carries the streams.
func Dial(host *os.File, streams grpc.ClientConnInterface) (*Client, error) {
	defer host.Close()
	want := hello().marshal()
	buf := make([]byte, len(want))
	n, _, err := unix.Recvfrom(int(host.Fd()), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if errors.Is(err, unix.EAGAIN) || err == nil && n == 0 {
		return nil, nil // nothing written: the plugin does not serve the channel
	}
	if err != nil {
		return nil, fmt.Errorf("control channel: %w", err)
	}
	if n < len(want) || string(buf[:n]) != string(want) {
		return nil, fmt.Errorf("control channel: the plugin's first frame is not the hello of %s (%d bytes: %q)", Hello, n, buf[:n])
	}
	conn, err := net.FileConn(host)
	if err != nil {
		return nil, fmt.Errorf("control channel: %w", err)
	}
	c := &Client{wire: wire{conn: conn}, streams: streams, calls: map[uint64]*pending{}, done: make(chan struct{})}
	go c.read()
	return c, nil
}

// Close closes the channel: calls waiting fail with Unavailable, as later
// ones do; Close returns once the reader has stopped.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Invoke makes a unary call over the channel. Its errors are gRPC status
// errors, as a grpc.ClientConn's: the plugin's status; Canceled or
// DeadlineExceeded when ctx ends first (the plugin is told to cancel the
// call); Unavailable once the channel is closed.
func (c *Client) Invoke(ctx context.Context, method string, args, reply any, _ ...grpc.CallOption) error {
	payload, err := encode(method, "request", args, maxRequest)
	if err != nil {
		return err
	}
	p, id, err := c.start(ctx, method, payload)
	if err != nil {
		return err
	}
	f, err := p.next(ctx)
	if err != nil {
		c.cancel(id)
		return err
	}
	if f.kind != kindReply {
		c.cancel(id)
		return status.Errorf(codes.Internal, "%s: the plugin sent a stream message to a unary call", method)
	}
	if f.code != codes.OK {
		if err := ended(ctx); err != nil {
			// Its end, not what it made the plugin answer, is the error.
			return status.FromContextError(err).Err()
		}
		return status.Error(f.code, f.msg)
	}
	return decode(method, "response", f.payload, reply)
}

// start sends the call frame of a new call and returns where its reply
// (and a stream's messages) will come.
func (c *Client) start(ctx context.Context, method string, payload []byte) (*pending, uint64, error) {
	if len(method) > 0xffff {
		return nil, 0, status.Errorf(codes.ResourceExhausted, "a method name of %d bytes is over the control channel's limit", len(method))
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		if timeout = time.Until(dl); timeout <= 0 {
			return nil, 0, status.FromContextError(context.DeadlineExceeded).Err()
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, status.FromContextError(err).Err()
	}
	p := &pending{notify: make(chan struct{}, 1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, 0, err
	}
	c.next++
	id := c.next
	c.calls[id] = p
	c.mu.Unlock()
	if err := c.write(&frame{kind: kindCall, id: id, method: method, timeout: timeout, payload: payload}); err != nil {
		c.forget(id)
		return nil, 0, status.Errorf(codes.Unavailable, "control channel: %s: %v", method, err)
	}
	return p, id, nil
}

// ended returns ctx's error, or context.DeadlineExceeded once its deadline
// has passed (before its timer has fired, Err is still nil).
func ended(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// cancel gives up on call id: the plugin is told, unless the call has
// ended; a reply that comes later is dropped.
func (c *Client) cancel(id uint64) {
	if c.forget(id) {
		_ = c.write(&frame{kind: kindCancel, id: id})
	}
}

// maxQueued is how many stream messages may wait for a reader: past it,
// the stream ends with ResourceExhausted (the supervisor opens its
// progress stream again), so that a plugin cannot grow its memory.
const maxQueued = 1024

// pending is what a call has received and not yet read: its stream's
// messages, then its reply.
type pending struct {
	mu     sync.Mutex
	queue  []frame
	ended  bool          // the reply, or a failure, is queued
	notify chan struct{} // a frame was queued
}

// push queues a stream message; false if too many wait.
func (p *pending) push(f frame) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return true
	}
	if len(p.queue) >= maxQueued {
		return false
	}
	p.queue = append(p.queue, f)
	p.signal()
	return true
}

// end queues the reply (or a failure as one); what comes after is dropped.
func (p *pending) end(f frame) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ended {
		p.ended = true
		p.queue = append(p.queue, f)
		p.signal()
	}
}

func (p *pending) signal() {
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// next returns the next frame, waiting for it; a status error when ctx
// ends first.
func (p *pending) next(ctx context.Context) (frame, error) {
	for {
		p.mu.Lock()
		if len(p.queue) > 0 {
			f := p.queue[0]
			p.queue = p.queue[1:]
			p.mu.Unlock()
			return f, nil
		}
		p.mu.Unlock()
		select {
		case <-p.notify:
		case <-ctx.Done():
			return frame{}, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// NewStream opens a server stream over the channel (its call goes out
// with the request, on SendMsg), and any other over the gRPC connection.
func (c *Client) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if desc.ClientStreams || !desc.ServerStreams {
		return c.streams.NewStream(ctx, desc, method, opts...)
	}
	return &clientStream{c: c, ctx: ctx, method: method}, nil
}

// clientStream is a server stream over the channel.
type clientStream struct {
	c      *Client
	ctx    context.Context
	method string
	p      *pending // nil until the request is sent
	id     uint64
	stop   func() bool // stops the cancel that ctx's end sends
	err    error       // how the stream ended (io.EOF: with OK)
}

func (st *clientStream) Header() (metadata.MD, error) { return nil, nil }
func (st *clientStream) Trailer() metadata.MD         { return nil }
func (st *clientStream) CloseSend() error             { return nil }
func (st *clientStream) Context() context.Context     { return st.ctx }

// SendMsg sends the call with its request; a server stream has one.
func (st *clientStream) SendMsg(m any) error {
	if st.p != nil {
		return status.Errorf(codes.Internal, "%s: a server stream takes one request", st.method)
	}
	payload, err := encode(st.method, "request", m, maxRequest)
	if err != nil {
		return err
	}
	if st.p, st.id, err = st.c.start(st.ctx, st.method, payload); err != nil {
		return err
	}
	// The plugin learns at once that the caller gave up, as from gRPC,
	// not at the caller's next RecvMsg.
	id := st.id
	st.stop = context.AfterFunc(st.ctx, func() { st.c.cancel(id) })
	return nil
}

// RecvMsg reads the next message into m; io.EOF once the stream has
// ended with OK, its status error otherwise.
func (st *clientStream) RecvMsg(m any) error {
	if st.err != nil {
		return st.err
	}
	if st.p == nil {
		return status.Errorf(codes.Internal, "%s: no request sent", st.method)
	}
	f, err := st.p.next(st.ctx)
	if err == nil {
		// Once the caller has given up, as from gRPC, nothing more.
		if err = ended(st.ctx); err != nil {
			err = status.FromContextError(err).Err()
		}
	}
	if err == nil && f.kind != kindReply {
		if err = decode(st.method, "message", f.payload, m); err == nil {
			return nil
		}
	}
	switch {
	case err != nil:
		st.c.cancel(st.id)
		st.err = err
	case f.code == codes.OK:
		st.err = io.EOF
	default:
		st.err = status.Error(f.code, f.msg)
	}
	st.stop()
	return st.err
}

// forget drops call id; false if it was gone (its reply came, or the
// channel closed).
func (c *Client) forget(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.calls[id]
	delete(c.calls, id)
	return ok
}

// read delivers replies until the channel closes or a frame is malformed
// (then it closes the channel), and fails every call left.
func (c *Client) read() {
	defer close(c.done)
	r := bufio.NewReader(c.conn)
	err := c.readHello(r)
	for err == nil {
		var f frame
		if f, err = readFrame(r); err != nil {
			break
		}
		switch f.kind {
		case kindReply:
			c.mu.Lock()
			p := c.calls[f.id]
			delete(c.calls, f.id)
			c.mu.Unlock()
			if p != nil {
				p.end(f)
			}
		case kindStream:
			c.mu.Lock()
			p := c.calls[f.id]
			c.mu.Unlock()
			if p != nil && !p.push(f) {
				c.cancel(f.id)
				p.end(frame{kind: kindReply, code: codes.ResourceExhausted, msg: fmt.Sprintf("more than %d stream messages wait to be read", maxQueued)})
			}
		default:
			err = fmt.Errorf("%w: a frame of kind %d from the plugin", errFrame, f.kind)
		}
	}
	c.conn.Close()
	msg := "control channel closed: " + err.Error()
	if errors.Is(err, net.ErrClosed) {
		msg = "control channel closed"
	}
	c.mu.Lock()
	c.err = status.Error(codes.Unavailable, msg)
	calls := c.calls
	c.calls = nil
	c.mu.Unlock()
	for _, p := range calls {
		p.end(frame{kind: kindReply, code: codes.Unavailable, msg: msg})
	}
}

// readHello reads the hello frame Dial saw.
func (c *Client) readHello(r *bufio.Reader) error {
	f, err := readFrame(r)
	if err == nil && (f.kind != kindHello || string(f.payload) != Hello) {
		err = fmt.Errorf("%w: the first frame is not the hello", errFrame)
	}
	return err
}

package unixrpc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
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

// Client makes unary calls over the supervisor's end of the channel, and
// passes streams to the gRPC connection beside it. It is a
// grpc.ClientConnInterface, for the generated New…Client functions.
type Client struct {
	conn    net.Conn
	streams grpc.ClientConnInterface

	wmu   sync.Mutex // one frame at a time on conn
	mu    sync.Mutex
	next  uint64
	calls map[uint64]chan frame // the calls waiting for their reply
	err   error                 // why the channel is closed; nil while open
	done  chan struct{}         // closed when the reader has stopped
}

// Dial returns a client on host, the supervisor's end of a plugin's
// channel, once the plugin has spoken go-plugin's handshake: nil (and host
// closed) if the plugin wrote no hello frame, which it writes before the
// handshake when it serves the channel. streams carries the streams.
func Dial(host *os.File, streams grpc.ClientConnInterface) (*Client, error) {
	defer host.Close()
	hello := (&frame{kind: kindHello, payload: []byte(Hello)}).marshal()
	buf := make([]byte, len(hello))
	n, _, err := unix.Recvfrom(int(host.Fd()), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if errors.Is(err, unix.EAGAIN) || err == nil && n == 0 {
		return nil, nil // nothing written: the plugin does not serve the channel
	}
	if err != nil {
		return nil, fmt.Errorf("control channel: %w", err)
	}
	if n < len(hello) || string(buf[:n]) != string(hello) {
		return nil, fmt.Errorf("control channel: the plugin's first frame is not the hello of %s (%d bytes: %q)", Hello, n, buf[:n])
	}
	conn, err := net.FileConn(host)
	if err != nil {
		return nil, fmt.Errorf("control channel: %w", err)
	}
	c := &Client{conn: conn, streams: streams, calls: map[uint64]chan frame{}, done: make(chan struct{})}
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
	in, ok := args.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "%s: %T is not a protobuf message", method, args)
	}
	out, ok := reply.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "%s: %T is not a protobuf message", method, reply)
	}
	payload, err := proto.Marshal(in)
	if err != nil {
		return status.Errorf(codes.Internal, "%s: encode the request: %v", method, err)
	}
	if len(method) > 0xffff || len(payload) > MaxFrame-0x10100 {
		return status.Errorf(codes.ResourceExhausted, "%s: a request of %d bytes is over the control channel's limit", method, len(payload))
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		if timeout = time.Until(dl); timeout <= 0 {
			return status.FromContextError(context.DeadlineExceeded).Err()
		}
	}
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	ch := make(chan frame, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.next++
	id := c.next
	c.calls[id] = ch
	c.mu.Unlock()
	if err := c.write(&frame{kind: kindCall, id: id, method: method, timeout: timeout, payload: payload}); err != nil {
		c.forget(id)
		return status.Errorf(codes.Unavailable, "control channel: %s: %v", method, err)
	}
	select {
	case f := <-ch:
		if f.code != codes.OK {
			return status.Error(f.code, f.msg)
		}
		if err := proto.Unmarshal(f.payload, out); err != nil {
			return status.Errorf(codes.Internal, "%s: decode the response: %v", method, err)
		}
		return nil
	case <-ctx.Done():
		if c.forget(id) {
			_ = c.write(&frame{kind: kindCancel, id: id}) // the reply, if it comes, is dropped
		}
		return status.FromContextError(ctx.Err()).Err()
	}
}

// NewStream opens a stream over the gRPC connection.
func (c *Client) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.streams.NewStream(ctx, desc, method, opts...)
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

func (c *Client) write(f *frame) error {
	b := f.marshal()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.conn.Write(b)
	return err
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
		if f.kind != kindReply {
			err = fmt.Errorf("%w: a frame of kind %d from the plugin", errFrame, f.kind)
			break
		}
		c.mu.Lock()
		ch := c.calls[f.id]
		delete(c.calls, f.id)
		c.mu.Unlock()
		if ch != nil {
			ch <- f
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
	for _, ch := range calls {
		ch <- frame{kind: kindReply, code: codes.Unavailable, msg: msg}
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

package unixrpc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Server serves the unary methods and the server streams of the services
// registered with it over a plugin process's end of the channel, each call
// in a goroutine of its own, as gRPC does. It is a grpc.ServiceRegistrar:
// the generated Register…Server functions register a service with it as
// with a grpc.Server (streams from the client are not served).
type Server struct {
	wire
	log     hclog.Logger
	methods map[string]method
	streams map[string]stream

	ctx    context.Context // ends when the server stops
	cancel context.CancelFunc
	mu     sync.Mutex
	calls  map[uint64]context.CancelFunc // the calls running
	wg     sync.WaitGroup                // the calls' goroutines
	done   chan struct{}                 // closed when the reader has stopped
}

type method struct {
	impl    any
	handler grpc.MethodHandler
}

type stream struct {
	impl    any
	handler grpc.StreamHandler
}

// FromEnv returns a server on the descriptor Env names, nil when Env is not
// set. A descriptor that is not a unix stream socket is an error: the
// process was not started by a supervisor that passes one.
func FromEnv(log hclog.Logger) (*Server, error) {
	v, ok := os.LookupEnv(Env)
	if !ok {
		return nil, nil
	}
	// Not for the plugin's own children: the descriptor is not theirs.
	os.Unsetenv(Env)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a descriptor number (3 or more)", Env, v)
	}
	if t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != unix.SOCK_STREAM {
		return nil, fmt.Errorf("%s=%d: not a stream socket (%v)", Env, fd, err)
	}
	unix.CloseOnExec(fd) // the plugin's own children must not hold it
	f := os.NewFile(uintptr(fd), "control channel")
	defer f.Close()
	conn, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("%s=%d: %w", Env, fd, err)
	}
	return NewServer(conn, log), nil
}

// NewServer returns a server on conn, the plugin's end; Serve starts it.
func NewServer(conn net.Conn, log hclog.Logger) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{wire: wire{conn: conn}, log: log, methods: map[string]method{}, streams: map[string]stream{}, ctx: ctx, cancel: cancel, calls: map[uint64]context.CancelFunc{}, done: make(chan struct{})}
}

// RegisterService registers desc's unary methods and server streams,
// served by impl. Call it before Serve.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	for _, m := range desc.Methods {
		s.methods["/"+desc.ServiceName+"/"+m.MethodName] = method{impl: impl, handler: m.Handler}
	}
	for _, st := range desc.Streams {
		if st.ServerStreams && !st.ClientStreams {
			s.streams["/"+desc.ServiceName+"/"+st.StreamName] = stream{impl: impl, handler: st.Handler}
		}
	}
}

// Serve writes the hello frame, then reads and serves calls in a goroutine
// until the supervisor closes its end or Close is called.
func (s *Server) Serve() error {
	if err := s.write(hello()); err != nil {
		close(s.done)
		return fmt.Errorf("control channel: hello: %w", err)
	}
	go s.read()
	return nil
}

// Close stops the server: the channel is closed, every call running is
// cancelled, and Close returns once their goroutines have ended.
func (s *Server) Close() error {
	err := s.conn.Close()
	<-s.done
	s.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// read serves calls until the channel closes or a frame is malformed;
// then it closes the channel and cancels every call running.
func (s *Server) read() {
	defer close(s.done)
	defer s.cancel()
	defer s.conn.Close()
	r := bufio.NewReader(s.conn)
	for {
		f, err := readFrame(r)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				s.log.Error("control channel: closing it", "error", err)
			}
			return
		}
		switch f.kind {
		case kindCall:
			if !s.start(f) {
				return
			}
		case kindCancel:
			s.mu.Lock()
			if cancel := s.calls[f.id]; cancel != nil {
				cancel()
			}
			s.mu.Unlock()
		default:
			s.log.Error("control channel: closing it", "error", fmt.Sprintf("a frame of kind %d from the supervisor", f.kind))
			return
		}
	}
}

// start runs call f in a goroutine; false for a call id already running,
// a protocol error.
func (s *Server) start(f frame) bool {
	// One context per call, and its cancel kept: a context made and
	// dropped would stay among s.ctx's children until the server stops.
	var ctx context.Context
	var cancel context.CancelFunc
	if f.timeout > 0 {
		ctx, cancel = context.WithTimeout(s.ctx, f.timeout)
	} else {
		ctx, cancel = context.WithCancel(s.ctx)
	}
	s.mu.Lock()
	if s.calls[f.id] != nil {
		s.mu.Unlock()
		cancel()
		s.log.Error("control channel: closing it", "error", fmt.Sprintf("call %d started twice", f.id))
		return false
	}
	s.calls[f.id] = cancel
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		reply := s.call(ctx, f)
		s.mu.Lock()
		delete(s.calls, f.id)
		s.mu.Unlock()
		cancel()
		if err := s.write(reply); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Debug("control channel: reply", "method", f.method, "error", err)
		}
	}()
	return true
}

// call runs f's method and returns its reply.
func (s *Server) call(ctx context.Context, f frame) *frame {
	reply := &frame{kind: kindReply, id: f.id}
	var err error
	if m, ok := s.methods[f.method]; ok {
		dec := func(v any) error { return decode(f.method, "request", f.payload, v) }
		var resp any
		if resp, err = m.handler(m.impl, ctx, dec, nil); err == nil {
			reply.payload, err = encode(f.method, "response", resp, maxReply)
		}
	} else if st, ok := s.streams[f.method]; ok {
		err = st.handler(st.impl, &serverStream{ctx: ctx, s: s, call: f})
	} else {
		err = status.Errorf(codes.Unimplemented, "unknown method %s", f.method)
	}
	if err != nil {
		st := status.Convert(err)
		reply.code, reply.msg = st.Code(), st.Message()
	}
	return reply
}

// serverStream is the grpc.ServerStream of a call to a server stream: its
// request is the call's, each message it sends is a stream frame, and the
// reply that ends the call ends the stream.
type serverStream struct {
	ctx  context.Context
	s    *Server
	call frame
	read bool // the request has been read
}

func (st *serverStream) Context() context.Context     { return st.ctx }
func (st *serverStream) SetHeader(metadata.MD) error  { return nil }
func (st *serverStream) SendHeader(metadata.MD) error { return nil }
func (st *serverStream) SetTrailer(metadata.MD)       {}

// SendMsg sends one message of the stream.
func (st *serverStream) SendMsg(m any) error {
	b, err := encode(st.call.method, "message", m, maxReply)
	if err != nil {
		return err
	}
	if err := st.ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	if err := st.s.write(&frame{kind: kindStream, id: st.call.id, payload: b}); err != nil {
		return status.Errorf(codes.Unavailable, "%s: %v", st.call.method, err)
	}
	return nil
}

// RecvMsg reads the call's request, once; then io.EOF.
func (st *serverStream) RecvMsg(m any) error {
	if st.read {
		return io.EOF
	}
	st.read = true
	return decode(st.call.method, "request", st.call.payload, m)
}

package unixrpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// phase is a Phase service for the tests: Info names it, OpenRoom answers
// an endpoint made of the room, RemoveRoom blocks until its context ends
// (room 1), fails with InvalidArgument (room 2), or returns.
type phase struct {
	phasedv1.UnimplementedPhaseServer
	started chan struct{}  // a blocking RemoveRoom has begun
	ended   chan error     // and its context ended, with this error
	dl      chan time.Time // its context's deadline, zero for none
	logs    *bytes.Buffer  // the server's log
	mu      *sync.Mutex
	// Progress sends events r1…rN, then ends with progressErr, or
	// blocks until its context ends if progressBlock (ended gets why).
	events        int
	progressErr   error
	progressBlock bool
}

func (p *phase) Progress(_ *phasedv1.ProgressRequest, stream phasedv1.Phase_ProgressServer) error {
	for i := range p.events {
		if err := stream.Send(&phasedv1.ProgressEvent{Request: fmt.Sprintf("r%d", i+1), Done: int64(i)}); err != nil {
			p.ended <- err
			return err
		}
	}
	if p.progressBlock {
		<-stream.Context().Done()
		p.ended <- stream.Context().Err()
		return stream.Context().Err()
	}
	return p.progressErr
}

func (p *phase) Info(context.Context, *phasedv1.InfoRequest) (*phasedv1.InfoResponse, error) {
	return &phasedv1.InfoResponse{Name: "test", Kind: "phase"}, nil
}

func (p *phase) OpenRoom(_ context.Context, r *phasedv1.OpenRoomRequest) (*phasedv1.OpenRoomResponse, error) {
	return &phasedv1.OpenRoomResponse{Endpoint: fmt.Sprintf("ep-%d-%s", r.GetRoom(), r.GetPeerEndpoint())}, nil
}

func (p *phase) RemoveRoom(ctx context.Context, r *phasedv1.RemoveRoomRequest) (*phasedv1.RemoveRoomResponse, error) {
	switch r.GetRoom() {
	case 1:
		dl, _ := ctx.Deadline()
		p.dl <- dl
		close(p.started)
		<-ctx.Done()
		p.ended <- ctx.Err()
		return nil, ctx.Err()
	case 2:
		return nil, status.Error(codes.InvalidArgument, "room 2: no such room")
	}
	return &phasedv1.RemoveRoomResponse{}, nil
}

// serve serves a phase on one end of a new pair and returns the other.
func serve(t *testing.T) (*phase, *Server, *os.File) {
	t.Helper()
	host, plugin, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.FileConn(plugin)
	plugin.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := &phase{started: make(chan struct{}), ended: make(chan error, 1), dl: make(chan time.Time, 1), logs: &bytes.Buffer{}, mu: &sync.Mutex{}}
	srv := NewServer(conn, hclog.New(&hclog.LoggerOptions{Output: &lockedWriter{p.mu, p.logs}}))
	phasedv1.RegisterPhaseServer(srv, p)
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	return p, srv, host
}

// start serves a phase on one end of a pair and dials the other.
func start(t *testing.T) (*phase, *Server, *Client) {
	t.Helper()
	p, srv, host := serve(t)
	c, err := Dial(host, nil)
	if err != nil || c == nil {
		t.Fatalf("Dial: %v, %v", c, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	return p, srv, c
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("error %v, want %s with %q", err, code, msg)
	}
}

func TestCall(t *testing.T) {
	_, _, c := start(t)
	pc := phasedv1.NewPhaseClient(c)
	ctx := context.Background()
	info, err := pc.Info(ctx, &phasedv1.InfoRequest{})
	if err != nil || info.GetName() != "test" || info.GetKind() != "phase" {
		t.Fatalf("Info: %v, %v", info, err)
	}
	_, err = pc.RemoveRoom(ctx, &phasedv1.RemoveRoomRequest{Room: 2})
	wantStatus(t, err, codes.InvalidArgument, "room 2: no such room")
	err = c.Invoke(ctx, "/phased.v1.Phase/Nothing", &phasedv1.InfoRequest{}, &phasedv1.InfoResponse{})
	wantStatus(t, err, codes.Unimplemented, "unknown method /phased.v1.Phase/Nothing")
	// Too big to send: refused here, and the channel still works.
	big := &phasedv1.OpenRoomRequest{PeerEndpoint: strings.Repeat("x", MaxFrame)}
	_, err = pc.OpenRoom(ctx, big)
	wantStatus(t, err, codes.ResourceExhausted, "over the control channel's limit")
	if _, err := pc.Info(ctx, &phasedv1.InfoRequest{}); err != nil {
		t.Fatal(err)
	}
}

// A server stream: its messages in order, then io.EOF or its status.
func TestStream(t *testing.T) {
	p, _, c := start(t)
	p.events = 3
	ctx := context.Background()
	recv := func(want int) error {
		t.Helper()
		st, err := phasedv1.NewPhaseClient(c).Progress(ctx, &phasedv1.ProgressRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range want {
			ev, err := st.Recv()
			if err != nil || ev.GetRequest() != fmt.Sprintf("r%d", i+1) || ev.GetDone() != int64(i) {
				t.Fatalf("event %d: %v, %v", i, ev, err)
			}
		}
		_, err = st.Recv()
		if _, again := st.Recv(); again != err {
			t.Fatalf("after the end: %v, then %v", err, again)
		}
		return err
	}
	if err := recv(3); err != io.EOF {
		t.Fatalf("the end of the stream: %v, want io.EOF", err)
	}
	p.events, p.progressErr = 1, status.Error(codes.FailedPrecondition, "released")
	wantStatus(t, recv(1), codes.FailedPrecondition, "released")
}

// A stream the caller gives up on is cancelled in the plugin; one whose
// messages are not read fails with ResourceExhausted, and is cancelled
// there too.
func TestStreamCancel(t *testing.T) {
	p, _, c := start(t)
	p.events, p.progressBlock = 2, true
	ctx, cancel := context.WithCancel(context.Background())
	st, err := phasedv1.NewPhaseClient(c).Progress(ctx, &phasedv1.ProgressRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	// It ends in its wait (the context's error), or, when the cancel
	// came before its second Send, in that Send (a Canceled status, as
	// gRPC's server stream answers).
	if err := <-p.ended; !errors.Is(err, context.Canceled) && status.Code(err) != codes.Canceled {
		t.Fatalf("the plugin's stream ended with %v, want it cancelled", err)
	}
	_, err = st.Recv()
	wantStatus(t, err, codes.Canceled, "context canceled")

	p.events = maxQueued + 100
	st, err = phasedv1.NewPhaseClient(c).Progress(context.Background(), &phasedv1.ProgressRequest{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.ended: // cancelled while sending, or once blocked
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin's stream was not cancelled")
	}
	n := 0
	for ; ; n++ {
		if _, err = st.Recv(); err != nil {
			break
		}
	}
	wantStatus(t, err, codes.ResourceExhausted, "more than 1024 stream messages wait to be read")
	if n != maxQueued {
		t.Fatalf("%d messages read before the error, want %d", n, maxQueued)
	}
}

// Calls made together each get their own reply.
func TestConcurrent(t *testing.T) {
	_, _, c := start(t)
	pc := phasedv1.NewPhaseClient(c)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			resp, err := pc.OpenRoom(context.Background(), &phasedv1.OpenRoomRequest{Room: uint64(i), PeerEndpoint: strings.Repeat("p", i*100)})
			if want := fmt.Sprintf("ep-%d-%s", i, strings.Repeat("p", i*100)); err != nil || resp.GetEndpoint() != want {
				errs <- fmt.Errorf("call %d: %v, %v", i, resp.GetEndpoint(), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A caller that gives up cancels the call in the plugin.
func TestCancel(t *testing.T) {
	p, _, c := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := phasedv1.NewPhaseClient(c).RemoveRoom(ctx, &phasedv1.RemoveRoomRequest{Room: 1})
		done <- err
	}()
	<-p.started
	if dl := <-p.dl; !dl.IsZero() {
		t.Errorf("the call has a deadline %v; the caller gave none", dl)
	}
	cancel()
	wantStatus(t, <-done, codes.Canceled, "context canceled")
	select {
	case err := <-p.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the plugin's call ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin's call was not cancelled")
	}
}

// The caller's deadline is the plugin's.
func TestDeadline(t *testing.T) {
	p, _, c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	want, _ := ctx.Deadline()
	_, err := phasedv1.NewPhaseClient(c).RemoveRoom(ctx, &phasedv1.RemoveRoomRequest{Room: 1})
	wantStatus(t, err, codes.DeadlineExceeded, "deadline exceeded")
	if dl := <-p.dl; dl.IsZero() || dl.Before(want.Add(-50*time.Millisecond)) || dl.After(want.Add(time.Second)) {
		t.Errorf("the plugin's deadline %v, the caller's %v", dl, want)
	}
	// Its own deadline, or the caller's cancel when that came first.
	if err := <-p.ended; !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		t.Fatalf("the plugin's call ended with %v", err)
	}
	_, err = phasedv1.NewPhaseClient(c).Info(ctx, &phasedv1.InfoRequest{})
	wantStatus(t, err, codes.DeadlineExceeded, "deadline exceeded")
}

// When the plugin's end closes, calls waiting and later calls fail with
// Unavailable, and the server's Close waits for the calls it cancels.
func TestServerGone(t *testing.T) {
	p, srv, c := start(t)
	done := make(chan error, 1)
	go func() {
		_, err := phasedv1.NewPhaseClient(c).RemoveRoom(context.Background(), &phasedv1.RemoveRoomRequest{Room: 1})
		done <- err
	}()
	<-p.started
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-p.ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("the plugin's call ended with %v", err)
	}
	wantStatus(t, <-done, codes.Unavailable, "control channel closed: EOF")
	_, err := phasedv1.NewPhaseClient(c).Info(context.Background(), &phasedv1.InfoRequest{})
	wantStatus(t, err, codes.Unavailable, "control channel closed")
}

// No hello: the plugin does not serve the channel, and Dial says so with
// nil; a first frame that is not the hello is an error.
func TestDial(t *testing.T) {
	host, plugin, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()
	if c, err := Dial(host, nil); c != nil || err != nil {
		t.Fatalf("Dial with nothing written: %v, %v", c, err)
	}
	host, plugin2, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer plugin2.Close()
	if _, err := plugin2.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	c, err := Dial(host, nil)
	if c != nil || err == nil || !strings.Contains(err.Error(), "is not the hello of phased-unixrpc/1") {
		t.Fatalf("Dial after a stranger's bytes: %v, %v", c, err)
	}
}

// A malformed frame from the supervisor closes the channel, with the
// reason in the plugin's log; nothing panics.
func TestHostileFrames(t *testing.T) {
	cases := map[string][]byte{
		"too long":      binary.LittleEndian.AppendUint32(nil, MaxFrame+1),
		"too short":     binary.LittleEndian.AppendUint32(nil, 3),
		"unknown kind":  append(binary.LittleEndian.AppendUint32(nil, 9), 9, 0, 0, 0, 0, 0, 0, 0, 0),
		"reply to them": (&frame{kind: kindReply, id: 1}).marshal(),
		"method cut":    append(binary.LittleEndian.AppendUint32(nil, 12), 1, 1, 0, 0, 0, 0, 0, 0, 0, 200, 0, 1),
		"twice": append((&frame{kind: kindCall, id: 7, method: "/phased.v1.Phase/RemoveRoom", payload: []byte{8, 1}}).marshal(),
			(&frame{kind: kindCall, id: 7, method: "/phased.v1.Phase/Info"}).marshal()...),
	}
	want := map[string]string{
		"too long": "a frame of 4194305 bytes", "too short": "a frame of 3 bytes", "unknown kind": "unknown kind 9",
		"reply to them": "a frame of kind 2", "method cut": "no room for its method", "twice": "call 7 started twice",
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			p, srv, host := serve(t)
			hc, err := net.FileConn(host)
			host.Close()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := hc.Write(b); err != nil {
				t.Fatal(err)
			}
			// The server closes its end: past the hello, the host reads EOF.
			if err := hc.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 256)
			got := 0
			for {
				n, err := hc.Read(buf)
				got += n
				if err != nil {
					if !errors.Is(err, os.ErrDeadlineExceeded) {
						break
					}
					t.Fatalf("the server kept the channel open after %q", name)
				}
			}
			hc.Close()
			if err := srv.Close(); err != nil {
				t.Fatal(err)
			}
			p.mu.Lock()
			logs := p.logs.String()
			p.mu.Unlock()
			if !strings.Contains(logs, "control channel: closing it") || !strings.Contains(logs, want[name]) {
				t.Fatalf("log %q, want %q", logs, want[name])
			}
		})
	}
}

// FuzzFrame: any bytes either parse into a frame that marshals back to the
// same bytes, or are refused with errFrame; never a panic.
func FuzzFrame(f *testing.F) {
	for _, fr := range []frame{
		{kind: kindHello, payload: []byte(Hello)},
		{kind: kindCall, id: 3, method: "/phased.v1.Phase/Run", timeout: time.Second, payload: []byte{1, 2}},
		{kind: kindReply, id: 3, code: codes.NotFound, msg: "no"},
		{kind: kindCancel, id: 9},
	} {
		f.Add(fr.marshal()[4:])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseFrame(b)
		if err != nil {
			if !errors.Is(err, errFrame) {
				t.Fatalf("error %v does not wrap errFrame", err)
			}
			return
		}
		if got := fr.marshal(); !bytes.Equal(got[4:], b) || binary.LittleEndian.Uint32(got) != uint32(len(b)) {
			t.Fatalf("%x parsed as %+v, which marshals to %x", b, fr, got)
		}
	})
}

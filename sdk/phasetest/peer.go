package phasetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
	"google.golang.org/protobuf/proto"

	"github.com/phased/phased/sdk/plugintest"
	"github.com/phased/phased/sdk/proto/phasedv1"
	"github.com/phased/phased/sdk/transfer"
)

// peers numbers the reference peers of this process, for unique names.
var peers atomic.Uint64

// newPeer starts a reference peer: a transfer manager of the test process,
// in a run directory of its own, released when the test ends.
func newPeer(t *testing.T) *transfer.Manager {
	t.Helper()
	// INSTANCE.PID, as a plugin's: a test that died leaves segments the
	// supervisor's sweep recognises.
	name := transfer.ProcessName(fmt.Sprintf("phasetest-peer-%d", peers.Add(1)), os.Getpid())
	m, err := transfer.New(transfer.Config{Dir: plugintest.RunDir(t), Name: name})
	if err == nil {
		err = m.Start()
	}
	if err != nil {
		t.Fatalf("reference peer: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Release(ctx); err != nil {
			t.Errorf("reference peer: release: %v", err)
		}
	})
	return m
}

// fakeSender is the sender side of rooms, written from docs/protocol.md
// with raw sockets rather than a transfer manager, so that it can send
// what no correct sender would: it binds the PULL socket a receiver sends
// its descriptor to, and pushes status frames of its choosing.
type fakeSender struct {
	t        *testing.T
	dir      string
	endpoint string // where its PULL socket is bound
	zctx     *zmq.Context
	pull     *zmq.Socket
}

func newFakeSender(t *testing.T) *fakeSender {
	t.Helper()
	f := &fakeSender{t: t, dir: plugintest.RunDir(t)}
	var err error
	if f.zctx, err = zmq.NewContext(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.zctx.Term() })
	f.endpoint = "ipc://" + filepath.Join(f.dir, "fake.sock")
	f.pull = f.socket(zmq.PULL)
	if err := f.pull.SetRcvtimeo(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := f.pull.Bind(f.endpoint); err != nil {
		t.Fatal(err)
	}
	return f
}

// socket opens a socket of the fake's context, closed when the test ends
// (before the context is terminated: cleanups run last first).
func (f *fakeSender) socket(typ zmq.Type) *zmq.Socket {
	s, err := f.zctx.NewSocket(typ)
	if err != nil {
		f.t.Fatal(err)
	}
	_ = s.SetLinger(0)
	f.t.Cleanup(func() { _ = s.Close() })
	return s
}

// descriptor waits for the descriptor of room.
func (f *fakeSender) descriptor(room uint64) (*phasedv1.Descriptor, error) {
	b, err := f.pull.RecvBytes(0)
	if err != nil {
		return nil, err
	}
	d := &phasedv1.Descriptor{}
	if err := proto.Unmarshal(b, d); err != nil {
		return nil, err
	}
	if d.GetRoom() != room {
		return nil, fmt.Errorf("a descriptor for room %d, want %d", d.GetRoom(), room)
	}
	return d, nil
}

// push connects a PUSH socket to endpoint.
func (f *fakeSender) push(endpoint string) *zmq.Socket {
	s := f.socket(zmq.PUSH)
	if err := s.Connect(endpoint); err != nil {
		f.t.Fatal(err)
	}
	return s
}

// send sends one frame, or the encoding of a message.
func send(t *testing.T, s *zmq.Socket, m any) {
	t.Helper()
	var b []byte
	switch m := m.(type) {
	case []byte:
		b = m
	case proto.Message:
		var err error
		if b, err = proto.Marshal(m); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("send %T", m)
	}
	if _, err := s.SendBytes(b, 0); err != nil {
		t.Fatal(err)
	}
}

// errTimeout is returned by waitFor when the condition did not come true.
var errTimeout = errors.New("timed out")

// waitFor polls cond until it is true or d has passed.
func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

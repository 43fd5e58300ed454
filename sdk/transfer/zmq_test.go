package transfer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// openZMQ opens both sides of a zmq room, sender first, and returns the
// sender's endpoint.
func (p *pair) openZMQ(t testing.TB, room uint64, specs []tensor.Spec) string {
	t.Helper()
	return p.openWith(t, sdk.BackendZMQ, room, specs)
}

func TestZMQTransferIntact(t *testing.T) {
	p := newPair(t, nil)
	ts := []tensor.Tensor{
		filled(t, tensor.Spec{Name: "context", DType: tensor.Float32, Shape: []int64{512, 4096}}, 1), // 8 MiB: two data messages
		filled(t, tensor.Spec{Name: "mask", DType: tensor.Uint8, Shape: []int64{3, 5, 7}}, 2),
		filled(t, tensor.Spec{Name: "empty", DType: tensor.Uint8, Shape: []int64{0}}, 3),
		filled(t, tensor.Spec{Name: "latent", DType: tensor.Float32, Shape: []int64{16, 21, 60, 104}}, 4), // 8.4 MB, not a multiple of a chunk
	}
	ep := p.openZMQ(t, 1, specsOf(ts))
	if !strings.HasPrefix(ep, "tcp://127.0.0.1:") || strings.HasSuffix(ep, ":*") {
		t.Fatalf("sender endpoint %q: want the bound tcp://127.0.0.1:PORT", ep)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.transfer(ctx, 1, ts); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, p.snd, 1, Success)
	wantStatus(t, p.rcv, 1, Success)
	if n := p.snd.Dropped() + p.rcv.Dropped(); n != 0 {
		t.Errorf("%d frames dropped", n)
	}
	if err := errors.Join(p.snd.Remove(1), p.rcv.Remove(1)); err != nil {
		t.Fatal(err)
	}
	assertClean(t, p.dir, p.sn, p.rn)
}

// TestZMQMixedBackends: one manager serves shm and zmq rooms at once.
func TestZMQMixedBackends(t *testing.T) {
	p := newPair(t, nil)
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{1000}}, 9)
	p.open(t, 1, []tensor.Spec{x.Spec})
	p.openZMQ(t, 2, []tensor.Spec{x.Spec})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, room := range []uint64{2, 1} {
		if err := p.transfer(ctx, room, []tensor.Tensor{x}); err != nil {
			t.Fatalf("room %d: %v", room, err)
		}
	}
}

// TestZMQHostileData injects data messages at a zmq receiver's status
// socket: the wrong room or generation, an offset in no buffer, or data
// before Transferring are dropped; data that overflows its buffer fails
// the room; nothing is written outside the room's buffers.
func TestZMQHostileData(t *testing.T) {
	p := newPair(t, nil)
	zctx := rawContext(t)
	spec := tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{64}}
	p.openZMQ(t, 1, []tensor.Spec{spec})
	rcvEP := func(room uint64) string {
		p.rcv.mu.Lock()
		defer p.rcv.mu.Unlock()
		return p.rcv.rooms[room].endpoint
	}
	gen := func(room uint64) uint64 {
		p.rcv.mu.Lock()
		defer p.rcv.mu.Unlock()
		return p.rcv.rooms[room].gen
	}
	push := rawSocket(t, zctx, zmq.PUSH)
	if err := push.Connect(rcvEP(1)); err != nil {
		t.Fatal(err)
	}
	send := func(h dataHeader, body []byte) {
		t.Helper()
		if _, err := push.SendBytes(h.encode(), zmq.SNDMORE); err != nil {
			t.Fatal(err)
		}
		if _, err := push.SendBytes(body, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Before Transferring: dropped.
	send(dataHeader{room: 1, generation: gen(1), offset: 0}, make([]byte, 8))
	eventually(t, "a dropped early data message", func() bool { return p.rcv.Dropped() == 1 })
	// Move the room to Transferring as its sender would.
	frame, err := encodeStatus(1, gen(1), Transferring, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, push, frame)
	eventually(t, "Transferring", func() bool { st, _, _ := p.rcv.Status(1); return st == Transferring })
	for i, h := range []dataHeader{
		{room: 2, generation: gen(1), offset: 0},     // another room
		{room: 1, generation: gen(1) + 1, offset: 0}, // another generation
		{room: 1, generation: gen(1), offset: 1 << 40},
	} {
		send(h, make([]byte, 8))
		want := uint64(2 + i)
		eventually(t, "a dropped data message", func() bool { return p.rcv.Dropped() == want })
	}
	wantStatus(t, p.rcv, 1, Transferring)
	// 65 bytes at offset 0 of a 64-byte buffer: the room fails.
	send(dataHeader{room: 1, generation: gen(1), offset: 0}, make([]byte, 65))
	eventually(t, "the room to fail", func() bool { st, _, _ := p.rcv.Status(1); return st == Failed })
	_, reason, _ := p.rcv.Status(1)
	if !strings.Contains(reason, "a data message of 65 bytes at offset 0 overflows its buffer (64 bytes left)") {
		t.Fatalf("reason %q", reason)
	}
}

// TestZMQBackendMismatch: a sender room opened for zmq refuses a shm
// receiver's descriptor, and the reverse.
func TestZMQBackendMismatch(t *testing.T) {
	p := newPair(t, nil)
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{16}}, 1)
	ep, err := p.snd.OpenSenderWith(1, sdk.BackendZMQ)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.OpenReceiver(1, ep, []tensor.Spec{x.Spec}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = p.snd.Send(ctx, 1, []tensor.Tensor{x})
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "the receiver's descriptor is for the shm backend, the room is zmq") {
		t.Fatalf("Send = %v", err)
	}
	if _, err := p.snd.OpenSenderWith(2, "rdma"); err == nil || !strings.Contains(err.Error(), `unknown backend "rdma"`) {
		t.Fatalf("OpenSenderWith(rdma) = %v", err)
	}
}

// TestZMQDataAfterSuccess: once the Success frame is in, later data
// messages are dropped, so the bytes Receive verifies and hands out cannot
// change under it.
func TestZMQDataAfterSuccess(t *testing.T) {
	p := newPair(t, nil)
	zctx := rawContext(t)
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{64}}, 5)
	p.openZMQ(t, 1, []tensor.Spec{x.Spec})
	p.rcv.mu.Lock()
	ep, gen := p.rcv.rooms[1].endpoint, p.rcv.rooms[1].gen
	p.rcv.mu.Unlock()
	push := rawSocket(t, zctx, zmq.PUSH)
	if err := push.Connect(ep); err != nil {
		t.Fatal(err)
	}
	data := func(b []byte) {
		t.Helper()
		if _, err := push.SendBytes(dataHeader{room: 1, generation: gen}.encode(), zmq.SNDMORE); err != nil {
			t.Fatal(err)
		}
		if _, err := push.SendBytes(b, 0); err != nil {
			t.Fatal(err)
		}
	}
	frame := func(st Status, hs []header) []byte {
		b, err := encodeStatus(1, gen, st, "", hs)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	mustSend(t, push, frame(Transferring, nil))
	data(x.Data)
	mustSend(t, push, frame(Success, []header{{spec: x.Spec, length: 64, sum: tensor.Checksum(x.Data)}}))
	data(make([]byte, 64)) // late: must not overwrite
	eventually(t, "the late data message to be dropped", func() bool { return p.rcv.Dropped() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, done, err := p.rcv.Receive(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if err := sameTensors(got, []tensor.Tensor{x}); err != nil {
		t.Fatal(err)
	}
}

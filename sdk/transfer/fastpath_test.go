package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
	"google.golang.org/protobuf/proto"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/proto/phasedv1"
	"github.com/phased/phased/sdk/tensor"
)

// A sender given a descriptor with a checksum table ends the hop in the
// segment: the bytes, the table, progress and done, and no frame at all
// (and says its side is drained); given one without, it sends
// Transferring and Success as before.
func TestFastPathSender(t *testing.T) {
	p := newPair(t, nil)
	zctx := rawContext(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{16}}, 3) // 64 bytes
	y := filled(t, tensor.Spec{Name: "y", DType: tensor.Uint8, Shape: []int64{chunkSize + 5}}, 4)
	for i, tableAt := range []uint64{chunkSize + 256, 0} {
		room := uint64(1 + i)
		ep, err := p.snd.OpenSender(room)
		if err != nil {
			t.Fatal(err)
		}
		push := rawSocket(t, zctx, zmq.PUSH)
		if err := push.Connect(ep); err != nil {
			t.Fatal(err)
		}
		status := rawSocket(t, zctx, zmq.PULL)
		statusEP := "ipc://" + filepath.Join(p.dir, "fake-status-"+string(rune('a'+i))+".sock")
		if err := status.Bind(statusEP); err != nil {
			t.Fatal(err)
		}
		const size = 2 * chunkSize
		seg := fakeSegment(t, segmentName(p.rn, room, 5), size)
		d := &phasedv1.Descriptor{
			Version: wireVersion, Room: room, Generation: 5, StatusEndpoint: statusEP,
			Segment: seg, SegmentSize: size, ChecksumOffset: tableAt,
			Buffers: []*phasedv1.TensorHeader{
				{Name: "x", Dtype: uint32(tensor.Float32), Shape: []int64{16}, Offset: 64, Length: 64},
				{Name: "y", Dtype: uint32(tensor.Uint8), Shape: []int64{chunkSize + 5}, Offset: 128, Length: chunkSize + 5},
			},
		}
		mustSend(t, push, marshal(t, d))
		if p.snd.Drained(room) {
			t.Errorf("room %d: drained before its Send", room)
		}
		if err := p.snd.Send(ctx, room, []tensor.Tensor{y, x}); err != nil {
			t.Fatal(err)
		}
		// Drained: the fast path sent no frame that could still be queued.
		if got, want := p.snd.Drained(room), tableAt != 0; got != want {
			t.Errorf("room %d: Drained() = %v after its Send, want %v", room, got, want)
		}
		data, err := os.ReadFile(filepath.Join(DefaultShmDir, seg))
		if err != nil {
			t.Fatal(err)
		}
		if string(data[64:128]) != string(x.Data) || string(data[128:128+len(y.Data)]) != string(y.Data) {
			t.Fatalf("room %d: the buffers do not hold the tensors", room)
		}
		c := ctrlOf(data)
		if got, want := c.progress.Load(), uint64(64+len(y.Data)); got != want {
			t.Errorf("room %d: progress %d, want %d", room, got, want)
		}
		// Frames, if any, were queued before Send returned: wait for the
		// two of the frame path, or a while for none.
		want, wait := 0, 200*time.Millisecond
		if tableAt == 0 {
			want, wait = 2, 5*time.Second
		}
		frames := recvFrames(t, status, want, wait)
		if tableAt == 0 {
			if c.done.Load() != 0 {
				t.Errorf("room %d: done set without a checksum table", room)
			}
			if len(frames) != 2 || frames[0].GetStatus() != Transferring.Proto() || frames[1].GetStatus() != Success.Proto() ||
				frames[1].GetTensors()[1].GetXxh3() != tensor.Checksum(y.Data) {
				t.Errorf("room %d: frames %v, want Transferring, then Success with the checksums", room, frames)
			}
			continue
		}
		if c.done.Load() != 1 {
			t.Errorf("room %d: done %d, want 1", room, c.done.Load())
		}
		for k, want := range []uint64{tensor.Checksum(x.Data), tensor.Checksum(y.Data)} {
			if got := binary.LittleEndian.Uint64(data[tableAt+8*uint64(k):]); got != want {
				t.Errorf("room %d: checksum %d is %016x, want %016x", room, k, got, want)
			}
		}
		if len(frames) != 0 {
			t.Errorf("room %d: %d frames on the fast path, want none: %v", room, len(frames), frames)
		}
	}
}

// recvFrames reads the status frames that arrive within wait, until it
// has more than want (want > 0: until it has want).
func recvFrames(t *testing.T, s *zmq.Socket, want int, wait time.Duration) []*phasedv1.StatusFrame {
	t.Helper()
	var out []*phasedv1.StatusFrame
	deadline := time.Now().Add(wait)
	for {
		left := time.Until(deadline)
		if left <= 0 || want > 0 && len(out) >= want {
			return out
		}
		if err := s.SetRcvtimeo(left); err != nil {
			t.Fatal(err)
		}
		b, err := s.RecvBytes(0)
		if err != nil {
			return out
		}
		f := &phasedv1.StatusFrame{}
		if err := proto.Unmarshal(b, f); err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
}

// A receiver takes the end of a hop from the control block, and trusts
// only what it verifies: a wrong checksum in the table fails the room. A
// sender that publishes progress and sends frames (the Python SDK's way)
// is served too, its Transferring frame not counted as a duplicate.
func TestFastPathReceiver(t *testing.T) {
	f := newFakeRig(t)
	rcv, zctx := f.rcv, f.zctx
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	specs := []tensor.Spec{
		{Name: "a", DType: tensor.Float32, Shape: []int64{8}},
		{Name: "b", DType: tensor.Uint8, Shape: []int64{3 * chunkSize}},
	}
	want := []tensor.Tensor{filled(t, specs[0], 1), filled(t, specs[1], 2)}
	bufs, at, _, err := shmLayout(specs)
	tableAt := at.sums
	if err != nil {
		t.Fatal(err)
	}

	// open opens a room and plays the sender: it writes the tensors and
	// returns the segment (unmapped at the test's end) and the descriptor.
	open := func(room uint64) ([]byte, *phasedv1.Descriptor) {
		t.Helper()
		d := f.open(t, room, specs)
		if d.GetChecksumOffset() != tableAt {
			t.Fatalf("descriptor names checksum offset %d, want %d (after the buffers)", d.GetChecksumOffset(), tableAt)
		}
		data := mapSegment(t, d)
		for i, b := range bufs {
			copy(data[b.offset:b.offset+b.length], want[i].Data)
		}
		return data, d
	}
	finish := func(data []byte, sums ...uint64) {
		for i, s := range sums {
			binary.LittleEndian.PutUint64(data[tableAt+8*uint64(i):], s)
		}
		ctrlOf(data).finish(totalBytes(bufs))
	}
	good := []uint64{tensor.Checksum(want[0].Data), tensor.Checksum(want[1].Data)}

	t.Run("the control block ends the hop", func(t *testing.T) {
		data, _ := open(1)
		received := make(chan error, 1)
		go func() {
			got, release, err := rcv.Receive(ctx, 1)
			if err == nil {
				err = sameTensors(got, want)
				release()
			}
			received <- err
		}()
		eventually(t, "Receive to sleep on the control block", func() bool {
			rcv.mu.Lock()
			defer rcv.mu.Unlock()
			return rcv.rooms[1].sleeping
		})
		finish(data, good...)
		if err := <-received; err != nil {
			t.Fatal(err)
		}
		wantStatus(t, rcv, 1, Success)
	})

	// done may come just after the verifying Receive looked for it (CI
	// once saw a Receive spin there, the room left WaitingForInput with
	// its checksums in hand).
	t.Run("done just after its look", func(t *testing.T) {
		data, _ := open(4)
		beforeDone = func(room uint64) {
			if room == 4 {
				finish(data, good...)
			}
		}
		t.Cleanup(func() { beforeDone = nil })
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		got, release, err := rcv.Receive(rctx, 4)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		if err := sameTensors(got, want); err != nil {
			t.Fatal(err)
		}
		wantStatus(t, rcv, 4, Success)
	})

	// A sender whose progress stops inside a checksum block (the SDKs
	// never publish so) leaves nothing to hash: the receiver sleeps until
	// it goes on, instead of looking again and again.
	t.Run("progress inside a block", func(t *testing.T) {
		data, _ := open(5)
		var looks atomic.Int64
		beforeDone = func(room uint64) {
			if room == 5 {
				looks.Add(1)
			}
		}
		t.Cleanup(func() { beforeDone = nil })
		received := make(chan error, 1)
		go func() {
			_, release, err := rcv.Receive(ctx, 5)
			if err == nil {
				release()
			}
			received <- err
		}()
		ctrlOf(data).publish(bufs[0].length + 100) // a's end, then 100 bytes of b's first block
		eventually(t, "Receive to hash a", func() bool {
			rcv.mu.Lock()
			defer rcv.mu.Unlock()
			return rcv.rooms[5].hashed == bufs[0].length
		})
		before := looks.Load()
		time.Sleep(300 * time.Millisecond) // a window to count looks in, not a timing
		if n := looks.Load() - before; n > 20 {
			t.Errorf("the receiver looked at the control block %d times in a window where nothing changed (one per 100 ms sleep expected)", n)
		}
		finish(data, good...)
		if err := <-received; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a wrong checksum in the table", func(t *testing.T) {
		data, _ := open(2)
		finish(data, good[0], good[1]^1)
		_, _, err := rcv.Receive(ctx, 2)
		if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), `verify: tensor 1 "b": checksum mismatch`) {
			t.Fatalf("Receive = %v, want a checksum mismatch of tensor 1", err)
		}
		wantStatus(t, rcv, 2, Failed)
	})

	t.Run("progress, then frames", func(t *testing.T) {
		data, d := open(3)
		ctrlOf(data).publish(totalBytes(bufs))
		wantStatus(t, rcv, 3, Transferring) // seen in the control block
		before := rcv.Dropped()
		push := rawSocket(t, zctx, zmq.PUSH)
		if err := push.Connect(d.GetStatusEndpoint()); err != nil {
			t.Fatal(err)
		}
		frame := func(st Status, hs []*phasedv1.TensorHeader) []byte {
			return marshal(t, &phasedv1.StatusFrame{Version: wireVersion, Room: 3, Generation: d.GetGeneration(), Status: st.Proto(), Tensors: hs})
		}
		var hs []*phasedv1.TensorHeader
		for i, b := range d.GetBuffers() {
			hs = append(hs, &phasedv1.TensorHeader{Name: b.GetName(), Dtype: b.GetDtype(), Shape: b.GetShape(), Length: b.GetLength(), Xxh3: good[i]})
		}
		mustSend(t, push, frame(Transferring, nil))
		mustSend(t, push, frame(Success, hs))
		got, release, err := rcv.Receive(ctx, 3)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		if err := sameTensors(got, want); err != nil {
			t.Fatal(err)
		}
		if n := rcv.Dropped() - before; n != 0 {
			t.Errorf("%d frames dropped, want 0", n)
		}
	})
}

// A receiver side learns that its sender has let go of the room only
// when both hold: the sender wrote done (the fast path) and its side is
// removed. Before either, and on the frame path (zmq), SenderLeft says
// no, so that the receiver's runtime leaves the removal to the
// supervisor's order.
func TestSenderLeft(t *testing.T) {
	p := newPair(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{4096}}, 7)
	for _, backend := range []sdk.Backend{sdk.BackendShm, sdk.BackendZMQ} {
		room := uint64(1)
		if backend == sdk.BackendZMQ {
			room = 2
		}
		p.openWith(t, backend, room, []tensor.Spec{x.Spec})
		if p.rcv.SenderLeft(room) {
			t.Fatalf("%s room %d: SenderLeft before any byte", backend, room)
		}
		if err := p.transfer(ctx, room, []tensor.Tensor{x}); err != nil {
			t.Fatal(err)
		}
		if p.rcv.SenderLeft(room) {
			t.Fatalf("%s room %d: SenderLeft while the sender's side is open", backend, room)
		}
		if err := p.snd.Remove(room); err != nil {
			t.Fatal(err)
		}
		// The sender's socket going away reaches the receiver through
		// its monitor, a moment later.
		want, wait := backend == sdk.BackendShm, 300*time.Millisecond
		if want {
			wait = 5 * time.Second
		}
		left := false
		for deadline := time.Now().Add(wait); !left && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			left = p.rcv.SenderLeft(room)
		}
		if left != want {
			t.Errorf("%s room %d: SenderLeft %v after the sender's side went, want %v", backend, room, left, want)
		}
		if err := p.rcv.Remove(room); err != nil {
			t.Fatal(err)
		}
		if p.rcv.SenderLeft(room) {
			t.Errorf("%s room %d: SenderLeft for a removed room", backend, room)
		}
	}
}

// TestSenderLeftUnread: SenderLeft reads the room's monitor itself when
// the socket owner has not (on one CPU, a Run that computed until the
// moment it asks kept the owner from running). The monitor is taken out
// of the owner's epoll set here, so the owner never reads the sender's
// leaving on its own: only SenderLeft's read can see it.
func TestSenderLeftUnread(t *testing.T) {
	p := newPair(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{4096}}, 7)
	const room = 1
	p.openWith(t, sdk.BackendShm, room, []tensor.Spec{x.Spec})
	if err := p.transfer(ctx, room, []tensor.Tensor{x}); err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.call(func(o *owner) error { return o.unwatch(o.rooms[room].mon) }); err != nil {
		t.Fatal(err)
	}
	if err := p.snd.Remove(room); err != nil {
		t.Fatal(err)
	}
	left := false
	for deadline := time.Now().Add(5 * time.Second); !left && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		left = p.rcv.SenderLeft(room)
	}
	if !left {
		t.Fatalf("room %d: SenderLeft false 5 s after the sender's side went, its monitor unwatched", room)
	}
	if err := p.rcv.Remove(room); err != nil {
		t.Fatal(err)
	}
}

// TestRemoveSoon: RemoveSoon takes the room out of Rooms at once, and
// the owner then closes its sockets (the receiver sees the sender go,
// the socket file is deleted) and lets go of its segment; Remove waits
// for that; it does nothing for an unknown room, nor after Release.
func TestRemoveSoon(t *testing.T) {
	p := newPair(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{4096}}, 3)
	ep := p.openWith(t, sdk.BackendShm, 1, []tensor.Spec{x.Spec})
	if err := p.transfer(ctx, 1, []tensor.Tensor{x}); err != nil {
		t.Fatal(err)
	}
	p.snd.RemoveSoon(1)
	if rooms := p.snd.Rooms(); len(rooms) != 0 {
		t.Errorf("rooms right after RemoveSoon: %+v, want none", rooms)
	}
	if err := p.snd.Remove(1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(strings.TrimPrefix(ep, "ipc://")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the sender's socket file after its removal: %v, want gone", err)
	}
	for deadline := time.Now().Add(5 * time.Second); !p.rcv.SenderLeft(1); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the receiver did not see its sender go")
		}
	}
	p.rcv.RemoveSoon(1)
	p.rcv.RemoveSoon(1)  // again: nothing more
	p.rcv.RemoveSoon(99) // unknown
	if err := p.rcv.Release(ctx); err != nil {
		t.Fatal(err)
	}
	p.rcv.RemoveSoon(2) // released: nothing, no panic
	if segs, _ := filepath.Glob(filepath.Join(DefaultShmDir, "phased-"+p.rn+"-*")); len(segs) > 0 {
		t.Errorf("the receiver's segments left after its release: %v", segs)
	}
	assertClean(t, p.dir)
}

// TestRemoveSoonOwnerStopped: a RemoveSoon whose command the socket
// owner never runs (it stopped first) is ended by the next Remove, which
// does not hang.
func TestRemoveSoonOwnerStopped(t *testing.T) {
	p := newPair(t, nil)
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{64}}, 5)
	p.openWith(t, sdk.BackendShm, 1, []tensor.Spec{x.Spec})
	p.rcv.cmds <- command{stop: true} // queued ahead, not yet seen
	p.rcv.RemoveSoon(1)               // queued behind the stop, which wakes the owner
	<-p.rcv.ownerDone
	done := make(chan error, 1)
	go func() { done <- p.rcv.Remove(1) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Remove hangs on a removal whose owner stopped")
	}
	p.rcv.mu.Lock()
	left := p.rcv.rooms[1]
	p.rcv.mu.Unlock()
	if left != nil {
		t.Error("the room is still known after Remove")
	}
}

package transfer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/phased/phased/sdk/tensor"
)

func TestTransferIntact(t *testing.T) {
	p := newPair(t, nil)
	ts := []tensor.Tensor{
		filled(t, tensor.Spec{Name: "context", DType: tensor.Float32, Shape: []int64{512, 4096}}, 1), // 8 MiB
		filled(t, tensor.Spec{Name: "mask", DType: tensor.Uint8, Shape: []int64{3, 5, 7}}, 2),
		filled(t, tensor.Spec{Name: "empty", DType: tensor.Uint8, Shape: []int64{0}}, 3),
		filled(t, tensor.Spec{Name: "scale", DType: tensor.Float32, Shape: []int64{1}}, 4),
	}
	const room = 7
	p.open(t, room, specsOf(ts))
	wantStatus(t, p.rcv, room, WaitingForInput)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sent := make(chan error, 1)
	go func() { sent <- p.snd.Send(ctx, room, ts) }()
	got, release, err := p.rcv.Receive(ctx, room)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := sameTensors(got, ts); err != nil {
		t.Fatal(err)
	}
	for _, g := range got {
		if len(g.Data) > 0 && uintptr(unsafe.Pointer(&g.Data[0]))%alignment != 0 {
			t.Errorf("tensor %q is not %d-byte aligned", g.Name, alignment)
		}
	}
	wantStatus(t, p.snd, room, Success)
	wantStatus(t, p.rcv, room, Success)
	if got := p.rcv.Rooms(); len(got) != 1 || got[0] != (RoomInfo{Room: room, Role: Receiver, Status: Success}) {
		t.Errorf("receiver rooms = %+v", got)
	}
	if n := p.snd.Dropped() + p.rcv.Dropped(); n != 0 {
		t.Errorf("%d frames dropped", n)
	}
	release()

	// Upstream first.
	if err := p.snd.Remove(room); err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.Remove(room); err != nil {
		t.Fatal(err)
	}
	assertClean(t, p.dir, p.sn, p.rn)
}

// TestReceiverPicksByName: a receiver gets, in its own order, just the
// tensors it asks for, whatever else the sender holds.
func TestReceiverPicksByName(t *testing.T) {
	p := newPair(t, nil)
	a := filled(t, tensor.Spec{Name: "a", DType: tensor.Float32, Shape: []int64{3}}, 1)
	b := filled(t, tensor.Spec{Name: "b", DType: tensor.Uint8, Shape: []int64{5}}, 2)
	c := filled(t, tensor.Spec{Name: "c", DType: tensor.Int64, Shape: []int64{2, 2}}, 3)
	p.open(t, 1, []tensor.Spec{c.Spec, a.Spec})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sent := make(chan error, 1)
	go func() { sent <- p.snd.Send(ctx, 1, []tensor.Tensor{a, b, c}) }()
	got, release, err := p.rcv.Receive(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := sameTensors(got, []tensor.Tensor{c, a}); err != nil {
		t.Fatal(err)
	}
}

func TestManyRoomsConcurrently(t *testing.T) {
	p := newPair(t, nil)
	const rooms = 50
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, rooms)
	for i := range rooms {
		room := uint64(1000 + i)
		ts := []tensor.Tensor{
			filled(t, tensor.Spec{Name: "latent", DType: tensor.Float32, Shape: []int64{64, 257}}, byte(i)),
			filled(t, tensor.Spec{Name: "tokens", DType: tensor.Uint8, Shape: []int64{int64(i + 1)}}, byte(i+1)),
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ep, err := p.snd.OpenSender(room)
			if err == nil {
				err = p.rcv.OpenReceiver(room, ep, specsOf(ts))
			}
			if err == nil {
				err = p.transfer(ctx, room, ts)
			}
			if err == nil {
				err = errors.Join(p.snd.Remove(room), p.rcv.Remove(room))
			}
			if err != nil {
				errs <- fmt.Errorf("room %d: %w", room, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(p.snd.Rooms()) + len(p.rcv.Rooms()); n != 0 {
		t.Errorf("%d rooms left open", n)
	}
	assertClean(t, p.dir, p.sn, p.rn)
}

func TestRemoveDuringTransfer(t *testing.T) {
	const room = 3
	started, proceed := make(chan struct{}), make(chan struct{})
	var chunks, once = 0, sync.Once{}
	p := newPair(t, func(m *Manager) {
		onChunk(t, m, func(uint64) {
			chunks++ // worker goroutine only
			once.Do(func() {
				close(started)
				<-proceed
			})
		})
	})
	big := filled(t, tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{16 * chunkSize}}, 9)
	p.open(t, room, []tensor.Spec{big.Spec})

	sent := make(chan error, 1)
	go func() { sent <- p.snd.Send(context.Background(), room, []tensor.Tensor{big}) }()
	<-started // the worker copied one chunk and holds the room
	wantStatus(t, p.snd, room, Transferring)

	removed := make(chan error, 1)
	go func() { removed <- p.snd.Remove(room) }()
	eventually(t, "Remove to mark the room", func() bool {
		st, reason, err := p.snd.Status(room)
		return err == nil && st == Failed && reason == "removed"
	})
	select {
	case err := <-removed:
		t.Fatalf("Remove returned (%v) while the worker held the room", err)
	default:
	}
	close(proceed)
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	err := <-sent
	if !errors.Is(err, ErrRemoved) {
		t.Fatalf("Send = %v, want ErrRemoved", err)
	}
	if want := "transfer: room removed: room 3"; err.Error() != want {
		t.Errorf("Send error %q, want %q", err, want)
	}
	if chunks != 1 {
		t.Errorf("the worker copied %d chunks after removal began, want 1 in all", chunks)
	}
	if _, _, err := p.snd.Status(room); !errors.Is(err, ErrUnknownRoom) {
		t.Errorf("Status after Remove = %v, want ErrUnknownRoom", err)
	}
	if _, err := os.Stat(filepath.Join(p.dir, senderSocketName(room))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sender socket file after Remove: %v", err)
	}
	// The receiver saw Transferring and never Success.
	eventually(t, "the receiver to see Transferring", func() bool {
		st, _, _ := p.rcv.Status(room)
		return st == Transferring
	})
	if err := p.rcv.Remove(room); err != nil {
		t.Fatal(err)
	}
	assertClean(t, p.dir, p.sn, p.rn)
}

func TestRemoveIdempotentAndLease(t *testing.T) {
	p := newPair(t, nil)
	const room = 11
	x := filled(t, tensor.Spec{Name: "frames", DType: tensor.Uint8, Shape: []int64{3 * chunkSize / 2}}, 5)
	want := append([]byte(nil), x.Data...)
	p.open(t, room, []tensor.Spec{x.Spec})
	ctx := context.Background()
	sent := make(chan error, 1)
	go func() { sent <- p.snd.Send(ctx, room, []tensor.Tensor{x}) }()
	got, release, err := p.rcv.Receive(ctx, room)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	// A second Receive gets its own lease.
	got2, release2, err := p.rcv.Receive(ctx, room)
	if err != nil {
		t.Fatal(err)
	}
	release2()

	var wg sync.WaitGroup
	for _, m := range []*Manager{p.snd, p.snd, p.rcv, p.rcv} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Remove(room); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, m := range []*Manager{p.snd, p.rcv} {
		if err := m.Remove(room); err != nil {
			t.Errorf("second Remove: %v", err)
		}
		if err := m.Remove(424242); err != nil {
			t.Errorf("Remove of an unknown room: %v", err)
		}
	}
	assertClean(t, p.dir, p.sn, p.rn) // the segment file is unlinked...
	if string(got[0].Data) != string(want) || len(got2[0].Data) != len(want) {
		t.Fatal("leased data changed after Remove") // ...but still mapped
	}
	release()
	release() // a second call does nothing

	if _, _, err := p.rcv.Receive(ctx, room); !errors.Is(err, ErrUnknownRoom) {
		t.Errorf("Receive after Remove = %v, want ErrUnknownRoom", err)
	}
	if _, err := p.snd.OpenSender(room); !errors.Is(err, ErrRoomExists) {
		t.Errorf("reopening room %d = %v, want ErrRoomExists", room, err)
	}
}

func TestReleaseWithRoomsOpen(t *testing.T) {
	base, baseFDs := runtime.NumGoroutine(), openFDs(t)
	dir, sn, rn := shortDir(t), uniqueName(), uniqueName()
	p := &pair{dir: dir, sn: sn, rn: rn}
	p.snd = startManager(t, dir, sn, nil)
	p.rcv = startManager(t, dir, rn, nil)
	ctx := context.Background()
	spec := tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{1024}}

	// Room 1 done, room 2 sender waiting for a descriptor, room 3 receiver
	// waiting for data, room 4 a lone receiver whose sender never bound.
	p.open(t, 1, []tensor.Spec{spec})
	if err := p.transfer(ctx, 1, []tensor.Tensor{filled(t, spec, 1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.snd.OpenSender(2); err != nil {
		t.Fatal(err)
	}
	p.open(t, 3, []tensor.Spec{spec})
	if err := p.rcv.OpenReceiver(4, "ipc://"+filepath.Join(dir, "nobody.sock"), []tensor.Spec{spec}); err != nil {
		t.Fatal(err)
	}
	sendErr, recvErr := make(chan error, 1), make(chan error, 1)
	go func() { sendErr <- p.snd.Send(ctx, 2, []tensor.Tensor{filled(t, spec, 2)}) }()
	go func() { _, _, err := p.rcv.Receive(ctx, 3); recvErr <- err }()
	eventually(t, "Send to wait for its descriptor", func() bool {
		p.snd.mu.Lock()
		defer p.snd.mu.Unlock()
		return p.snd.rooms[2].sending
	})

	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := p.snd.Release(rctx); err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.Release(rctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Release took %v", d)
	}
	if err := <-sendErr; !errors.Is(err, ErrRemoved) {
		t.Errorf("Send during Release = %v, want ErrRemoved", err)
	}
	// Receive may not have started waiting before Release removed room 3.
	if err := <-recvErr; !errors.Is(err, ErrRemoved) && !errors.Is(err, ErrReleased) {
		t.Errorf("Receive during Release = %v, want ErrRemoved or ErrReleased", err)
	}
	assertClean(t, dir, sn, rn)

	if err := p.snd.Release(rctx); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if _, err := p.snd.OpenSender(9); !errors.Is(err, ErrReleased) {
		t.Errorf("OpenSender after Release = %v, want ErrReleased", err)
	}
	if err := p.rcv.OpenReceiver(9, "ipc://x", []tensor.Spec{spec}); !errors.Is(err, ErrReleased) {
		t.Errorf("OpenReceiver after Release = %v, want ErrReleased", err)
	}
	if err := p.snd.Send(ctx, 2, nil); !errors.Is(err, ErrReleased) {
		t.Errorf("Send after Release = %v, want ErrReleased", err)
	}
	if err := p.snd.Start(); !errors.Is(err, ErrReleased) {
		t.Errorf("Start after Release = %v, want ErrReleased", err)
	}
	eventually(t, "goroutines to return to the baseline", func() bool { return runtime.NumGoroutine() <= base })
	if n := openFDs(t); n > baseFDs {
		t.Errorf("%d file descriptors open after Release, %d before the managers", n, baseFDs)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(fds)
}

func TestSendRetriesAfterContextEnds(t *testing.T) {
	p := newPair(t, nil)
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Int64, Shape: []int64{3}}, 1)
	ep, err := p.snd.OpenSender(1)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.snd.Send(short, 1, []tensor.Tensor{x}); !errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), "waiting for the receiver's descriptor") {
		t.Fatalf("Send before any descriptor = %v, want DeadlineExceeded", err)
	}
	wantStatus(t, p.snd, 1, Bootstrapping)
	if err := p.rcv.OpenReceiver(1, ep, []tensor.Spec{x.Spec}); err != nil {
		t.Fatal(err)
	}
	if err := p.transfer(context.Background(), 1, []tensor.Tensor{x}); err != nil {
		t.Fatal(err)
	}
}

func TestNotStarted(t *testing.T) {
	m, err := New(Config{Dir: shortDir(t), Name: uniqueName()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.OpenSender(1); !errors.Is(err, ErrNotStarted) {
		t.Errorf("OpenSender before Start = %v, want ErrNotStarted", err)
	}
	if _, _, err := m.Receive(context.Background(), 1); !errors.Is(err, ErrNotStarted) {
		t.Errorf("Receive before Start = %v, want ErrNotStarted", err)
	}
	if err := m.Release(context.Background()); err != nil {
		t.Errorf("Release before Start = %v", err)
	}
	if err := m.Start(); !errors.Is(err, ErrReleased) {
		t.Errorf("Start after Release = %v, want ErrReleased", err)
	}
}

func TestSendChecksArguments(t *testing.T) {
	p := newPair(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	spec := tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{4}}
	p.open(t, 1, []tensor.Spec{spec})

	bad := tensor.Tensor{Spec: spec, Data: make([]byte, 3)}
	if err := p.snd.Send(ctx, 1, []tensor.Tensor{bad}); !errors.Is(err, tensor.ErrBadSpec) {
		t.Errorf("Send of a malformed tensor = %v, want ErrBadSpec", err)
	}
	if err := p.snd.Send(ctx, 99, nil); !errors.Is(err, ErrUnknownRoom) {
		t.Errorf("Send to an unknown room = %v, want ErrUnknownRoom", err)
	}
	if err := p.rcv.Send(ctx, 1, nil); !errors.Is(err, ErrUnknownRoom) || !strings.Contains(err.Error(), "receiver room") {
		t.Errorf("Send on a receiver room = %v, want ErrUnknownRoom naming the role", err)
	}
	// A Send with tensors that do not fit the receiver fails the room on
	// both sides.
	other := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{2, 2}}, 1)
	err := p.snd.Send(ctx, 1, []tensor.Tensor{other})
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "does not match the receiver's buffer x:float32[4]") {
		t.Fatalf("Send with a wrong shape = %v", err)
	}
	_, _, err = p.rcv.Receive(ctx, 1)
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "sender: send: tensor 0") {
		t.Fatalf("Receive after the sender failed = %v", err)
	}
	if err := p.snd.Send(ctx, 1, []tensor.Tensor{other}); err == nil {
		t.Error("a second Send on a room succeeded")
	}
}

// TestRemoveBeforeOpen: a remove that overtakes its room's open spends the
// id, so the late open fails instead of leaving a room nobody removes.
func TestRemoveBeforeOpen(t *testing.T) {
	p := newPair(t, nil)
	if err := p.snd.Remove(7); err != nil {
		t.Fatal(err)
	}
	if _, err := p.snd.OpenSender(7); !errors.Is(err, ErrRoomExists) {
		t.Fatalf("OpenSender after Remove = %v, want ErrRoomExists", err)
	}
	if err := p.rcv.Remove(8); err != nil {
		t.Fatal(err)
	}
	ep, err := p.snd.OpenSender(8)
	if err != nil {
		t.Fatal(err)
	}
	err = p.rcv.OpenReceiver(8, ep, []tensor.Spec{{Name: "x", DType: tensor.Uint8, Shape: []int64{4}}})
	if !errors.Is(err, ErrRoomExists) {
		t.Fatalf("OpenReceiver after Remove = %v, want ErrRoomExists", err)
	}
	if len(p.rcv.Rooms()) != 0 {
		t.Fatalf("receiver rooms %+v", p.rcv.Rooms())
	}
	if err := p.snd.Remove(8); err != nil {
		t.Fatal(err)
	}
	assertClean(t, p.dir, p.sn, p.rn)
}

// TestReleaseExpiredContext: a Release whose context has already ended
// still tears everything down: the socket owner, its eventfd and the zmq
// context do not outlive it, and a later Release waits for the teardown
// and reports its outcome.
func TestReleaseExpiredContext(t *testing.T) {
	base, baseFDs := runtime.NumGoroutine(), openFDs(t)
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	dir := shortDir(t)
	for i := range 20 {
		name := uniqueName()
		m, err := New(Config{Dir: dir, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := m.OpenSender(uint64(i + 1)); err != nil {
			t.Fatal(err)
		}
		if err := m.Release(expired); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Release with an expired context: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = m.Release(ctx)
		cancel()
		if err != nil {
			t.Fatalf("second Release: %v", err)
		}
		assertClean(t, dir, name)
	}
	eventually(t, "goroutines to return to the baseline", func() bool { return runtime.NumGoroutine() <= base })
	if n := openFDs(t); n > baseFDs {
		t.Errorf("%d file descriptors open after the releases, %d before the managers", n, baseFDs)
	}
}

package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer/cuda"
)

// fakeGPU stands in for CUDA in unit tests: device memory is Go memory, an
// IPC handle names it in a table that every fakeGPU of the test process
// shares (two Managers in one process play two processes), and a copy is
// done when it is waited for, in the order issued, as on a stream. gate,
// when set, holds every Wait until it is closed.
type fakeGPU struct {
	mu     sync.Mutex
	issued int
	gate   chan struct{}
}

var fakeMem = struct {
	sync.Mutex
	bufs  map[cuda.Handle]*fakeBuffer
	live  int // buffers allocated and not freed
	peers int // peers opened and not closed
}{bufs: map[cuda.Handle]*fakeBuffer{}}

type fakeBuffer struct {
	h   cuda.Handle
	mem []byte
}

func (b *fakeBuffer) Handle() cuda.Handle { return b.h }
func (b *fakeBuffer) Ptr() uintptr        { return uintptr(unsafe.Pointer(&b.mem[0])) }
func (b *fakeBuffer) Free() error {
	fakeMem.Lock()
	defer fakeMem.Unlock()
	if fakeMem.bufs[b.h] != b {
		return fmt.Errorf("fake cuda: double free of %x", b.h[:4])
	}
	delete(fakeMem.bufs, b.h)
	fakeMem.live--
	return nil
}

// fakeBytes returns the device memory at ptr, n bytes, from any live
// buffer.
func fakeBytes(ptr uintptr, n int64) ([]byte, error) {
	fakeMem.Lock()
	defer fakeMem.Unlock()
	for _, b := range fakeMem.bufs {
		base := b.Ptr()
		if ptr >= base && ptr+uintptr(n) <= base+uintptr(len(b.mem)) {
			off := ptr - base
			return b.mem[off : off+uintptr(n)], nil
		}
	}
	return nil, fmt.Errorf("fake cuda: %#x (+%d) is no device memory", ptr, n)
}

type fakePeer struct {
	b      *fakeBuffer
	closed bool
}

func (p *fakePeer) Close() error {
	fakeMem.Lock()
	defer fakeMem.Unlock()
	if p.closed {
		return errors.New("fake cuda: peer closed twice")
	}
	p.closed = true
	fakeMem.peers--
	return nil
}

type fakeCopy struct {
	g    *fakeGPU
	run  func() error
	once sync.Once
	err  error
}

func (c *fakeCopy) Wait() error {
	if c.g.gate != nil {
		<-c.g.gate
	}
	c.once.Do(func() { c.err = c.run() })
	return c.err
}

func (g *fakeGPU) Alloc(size int64) (gpuBuffer, error) {
	b := &fakeBuffer{mem: make([]byte, size)}
	_, _ = rand.Read(b.h[:])
	fakeMem.Lock()
	defer fakeMem.Unlock()
	fakeMem.bufs[b.h] = b
	fakeMem.live++
	return b, nil
}

func (g *fakeGPU) Open(h cuda.Handle, size int64) (gpuPeer, error) {
	fakeMem.Lock()
	defer fakeMem.Unlock()
	b := fakeMem.bufs[h]
	switch {
	case b == nil:
		return nil, errors.New("fake cuda: invalid IPC handle")
	case size > int64(len(b.mem)):
		return nil, fmt.Errorf("fake cuda: %d bytes claimed, the allocation has %d: %w", size, len(b.mem), cuda.ErrOutOfRange)
	}
	fakeMem.peers++
	return &fakePeer{b: b}, nil
}

func (g *fakeGPU) issue(dst gpuPeer, off, n int64, run func(to []byte) error) (gpuCopy, error) {
	p := dst.(*fakePeer)
	if off < 0 || n < 0 || off+n > int64(len(p.b.mem)) {
		return nil, fmt.Errorf("fake cuda: bytes [%d, %d) outside the buffer: %w", off, off+n, cuda.ErrOutOfRange)
	}
	g.mu.Lock()
	g.issued++
	g.mu.Unlock()
	return &fakeCopy{g: g, run: func() error { return run(p.b.mem[off : off+n]) }}, nil
}

func (g *fakeGPU) CopyFromHost(dst gpuPeer, off int64, src []byte) (gpuCopy, error) {
	return g.issue(dst, off, int64(len(src)), func(to []byte) error { copy(to, src); return nil })
}

func (g *fakeGPU) Copy(dst gpuPeer, off int64, src uintptr, n int64) (gpuCopy, error) {
	return g.issue(dst, off, n, func(to []byte) error {
		from, err := fakeBytes(src, n)
		if err != nil {
			return err
		}
		copy(to, from)
		return nil
	})
}

func (g *fakeGPU) ToHost(dst []byte, src uintptr) error {
	b, err := fakeBytes(src, int64(len(dst)))
	if err != nil {
		return err
	}
	copy(dst, b)
	return nil
}

func (g *fakeGPU) Close() error { return nil }

func (g *fakeGPU) issuedCopies() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.issued
}

// withFakeGPU makes Managers started from now on with Config.CUDA use g,
// and checks at the end that every device buffer was freed and every peer
// closed.
func withFakeGPU(t *testing.T, g *fakeGPU) {
	t.Helper()
	saved := openGPU
	openGPU = func(int) (gpu, error) { return g, nil }
	t.Cleanup(func() {
		openGPU = saved
		fakeMem.Lock()
		defer fakeMem.Unlock()
		if fakeMem.live != 0 || fakeMem.peers != 0 {
			t.Errorf("left behind: %d device buffers, %d open peers", fakeMem.live, fakeMem.peers)
		}
	})
}

// newGPUPair is newPair with the cuda backend on both sides.
func newGPUPair(t *testing.T) *pair {
	t.Helper()
	p := &pair{dir: shortDir(t), sn: uniqueName(), rn: uniqueName()}
	p.snd = startManager(t, p.dir, p.sn, nil, func(c *Config) { c.CUDA = true })
	p.rcv = startManager(t, p.dir, p.rn, nil, func(c *Config) { c.CUDA = true })
	return p
}

// A cuda room moves host tensors and device tensors into the receiver's
// device memory; Receive hands out device pointers; Remove frees it all.
func TestCUDARoundTrip(t *testing.T) {
	g := &fakeGPU{}
	withFakeGPU(t, g)
	p := newGPUPair(t)
	host := filled(t, tensor.Spec{Name: "context", DType: tensor.Float32, Shape: []int64{3, 5}}, 1)
	want := filled(t, tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{3 * chunkSize}}, 2)
	empty := filled(t, tensor.Spec{Name: "empty", DType: tensor.Int64, Shape: []int64{0, 4}}, 3)
	// The sender's latent lives in its own device memory.
	src, err := g.Alloc(int64(len(want.Data)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := src.Free(); err != nil {
			t.Error(err)
		}
	}()
	mem, _ := fakeBytes(src.Ptr(), int64(len(want.Data)))
	copy(mem, want.Data)
	dev := tensor.Tensor{Spec: want.Spec, DevicePtr: src.Ptr()}

	const room = 1
	p.openWith(t, sdk.BackendCUDA, room, []tensor.Spec{host.Spec, want.Spec, empty.Spec})
	err = p.hop(context.Background(), room, []tensor.Tensor{host, dev, empty}, func(got []tensor.Tensor) error {
		for i, w := range []tensor.Tensor{host, want, empty} {
			if got[i].Data != nil || !got[i].OnDevice() || !got[i].Spec.Equal(w.Spec) {
				return fmt.Errorf("tensor %d: %s, %d host bytes, device %#x: want %s on the device", i, got[i].Spec, len(got[i].Data), got[i].DevicePtr, w.Spec)
			}
			b := make([]byte, len(w.Data))
			if err := p.rcv.CopyToHost(b, got[i]); err != nil {
				return err
			}
			if !bytes.Equal(b, w.Data) {
				return fmt.Errorf("tensor %d %q: device bytes differ", i, w.Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, p.snd, room, Success)
	wantStatus(t, p.rcv, room, Success)
	if n := g.issuedCopies(); n != 2 {
		t.Errorf("%d copies issued, want 2 (none for the empty tensor)", n)
	}
	if err := p.snd.Remove(room); err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.Remove(room); err != nil {
		t.Fatal(err)
	}
	fakeMem.Lock()
	live, peers := fakeMem.live, fakeMem.peers
	fakeMem.Unlock()
	if live != 1 || peers != 0 { // the sender's own source buffer
		t.Fatalf("after Remove: %d device buffers, %d peers; want 1 (the source), 0", live, peers)
	}
	assertClean(t, p.dir, p.sn, p.rn)
}

// The worker issues a cuda Send's copies and goes on with the next: many
// are in flight while the completer waits for them in order.
func TestCUDAManyInFlight(t *testing.T) {
	g := &fakeGPU{gate: make(chan struct{})}
	withFakeGPU(t, g)
	p := newGPUPair(t)
	const rooms = 8
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{4096}}, 7)
	for room := uint64(1); room <= rooms; room++ {
		p.openWith(t, sdk.BackendCUDA, room, []tensor.Spec{x.Spec})
	}
	for room := uint64(1); room <= rooms; room++ {
		waitDescriptor(t, p.snd, room)
	}
	sent := make(chan error, rooms)
	for room := uint64(1); room <= rooms; room++ {
		go func() { sent <- p.snd.Send(context.Background(), room, []tensor.Tensor{x}) }()
	}
	eventually(t, "every copy issued before any completed", func() bool { return g.issuedCopies() == rooms })
	close(g.gate)
	for range rooms {
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
	}
	for room := uint64(1); room <= rooms; room++ {
		got, release, err := p.rcv.Receive(context.Background(), room)
		if err != nil {
			t.Fatal(err)
		}
		b, err := fakeBytes(got[0].DevicePtr, int64(len(x.Data)))
		if err != nil || !bytes.Equal(b, x.Data) {
			t.Fatalf("room %d: bytes differ (%v)", room, err)
		}
		release()
	}
}

func waitDescriptor(t *testing.T, m *Manager, room uint64) {
	t.Helper()
	eventually(t, "the descriptor", func() bool { st, _, _ := m.Status(room); return st == WaitingForInput })
}

func TestCUDANeedsAGPU(t *testing.T) {
	// No Config.CUDA: cuda rooms are refused with what to do.
	p := newPair(t, nil)
	_, err := p.snd.OpenSenderWith(1, sdk.BackendCUDA)
	if err == nil || !strings.Contains(err.Error(), "a cuda room needs a GPU: set Config.CUDA") {
		t.Fatalf("OpenSenderWith(cuda) = %v", err)
	}
	ep, err := p.snd.OpenSender(2)
	if err != nil {
		t.Fatal(err)
	}
	err = p.rcv.OpenReceiverWith(2, sdk.BackendCUDA, ep, []tensor.Spec{{Name: "x", DType: tensor.Uint8, Shape: []int64{4}}})
	if err == nil || !strings.Contains(err.Error(), "a cuda room needs a GPU") {
		t.Fatalf("OpenReceiverWith(cuda) = %v", err)
	}
	if err := p.snd.CopyToHost(make([]byte, 4), tensor.Tensor{Spec: tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{4}}, DevicePtr: 0x1000}); err == nil || !strings.Contains(err.Error(), `transfer: copy to host: tensor "x": a cuda room needs a GPU`) {
		t.Fatalf("CopyToHost of a device tensor without a GPU = %v", err)
	}
	if err := p.snd.CopyToHost(make([]byte, 3), tensor.Tensor{Spec: tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{4}}, Data: make([]byte, 4)}); err == nil || !strings.Contains(err.Error(), `tensor "x" is 4 bytes, dst holds 3`) {
		t.Fatalf("CopyToHost into a short dst = %v", err)
	}
	// A device tensor cannot go through a shm room.
	const room = 3
	x := tensor.Tensor{Spec: tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{4}}, DevicePtr: 0x1000}
	p.open(t, room, []tensor.Spec{x.Spec})
	err = p.snd.Send(context.Background(), room, []tensor.Tensor{x})
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), `tensor 0 "x" is in device memory; only a cuda room moves it`) {
		t.Fatalf("Send of a device tensor over shm = %v", err)
	}
}

// Without -tags cuda, a Manager asked for the cuda backend does not start,
// and says how to get it.
func TestCUDANotBuilt(t *testing.T) {
	m, err := New(Config{Dir: shortDir(t), Name: uniqueName(), CUDA: true})
	if err != nil {
		t.Fatal(err)
	}
	err = m.Start()
	if err == nil {
		_ = m.Release(context.Background())
		t.Skip("built with -tags cuda and a GPU is present")
	}
	if !errors.Is(err, cuda.ErrNoCUDA) || !strings.Contains(err.Error(), "transfer: start: cuda device 0: ") {
		t.Fatalf("Start = %v, want an error about the cuda device", err)
	}
	if _, err := New(Config{Dir: shortDir(t), Name: uniqueName(), CUDA: true, CUDADevice: -1}); err == nil || !strings.Contains(err.Error(), "CUDADevice -1 is negative") {
		t.Fatalf("New with CUDADevice -1 = %v", err)
	}
}

//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"gorgonia.org/cu"
)

// Device is one GPU's primary context, held by this process from Init to
// Close. Create one per process and device and share it: it owns every
// Buffer, PeerBuffer and Copier made from it. Its methods are safe for
// concurrent use.
type Device struct {
	ordinal int
	dev     cu.Device
	ctx     cu.CUContext
	name    string

	mu      sync.Mutex
	closed  bool
	buffers map[Handle]*Buffer     // live allocations, by exported handle
	peers   map[Handle]*PeerBuffer // open peer mappings, by handle
	copiers map[*Copier]struct{}
}

// Init retains the primary context of the device with the given ordinal
// (0 is the first GPU CUDA_VISIBLE_DEVICES leaves visible). It is the only
// place the package starts using the driver; nothing happens at import
// beyond gorgonia.org/cu's own cuInit.
func Init(ordinal int) (*Device, error) {
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("cuda: count devices: %w", err)
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("cuda: device %d: this machine has %d CUDA devices; pick one of 0..%d", ordinal, n, n-1)
	}
	dev, err := cu.GetDevice(ordinal)
	if err != nil {
		return nil, fmt.Errorf("cuda: device %d: %w", ordinal, err)
	}
	ctx, err := dev.RetainPrimaryCtx()
	if err != nil {
		return nil, fmt.Errorf("cuda: device %d: retain primary context: %w", ordinal, err)
	}
	name, err := dev.Name()
	if err != nil {
		name = "unknown"
	}
	return &Device{
		ordinal: ordinal,
		dev:     dev,
		ctx:     ctx,
		name:    name,
		buffers: map[Handle]*Buffer{},
		peers:   map[Handle]*PeerBuffer{},
		copiers: map[*Copier]struct{}{},
	}, nil
}

// Ordinal returns the device's ordinal, as given to Init.
func (d *Device) Ordinal() int { return d.ordinal }

// String names the device, for logs: "cuda:0 (NVIDIA H100 80GB HBM3)".
func (d *Device) String() string { return fmt.Sprintf("%s:%d (%s)", Name, d.ordinal, d.name) }

// do runs f with the device's context current on this goroutine's OS
// thread, locked for the length of the call: CUDA contexts are per thread
// and goroutines move between threads.
func (d *Device) do(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cu.SetCurrentContext(d.ctx); err != nil {
		return fmt.Errorf("make the context of device %d current: %w", d.ordinal, err)
	}
	return f()
}

// Alloc allocates size bytes of device memory and exports its IPC handle.
// The memory is not cleared. Free it once no peer writes into it any more.
func (d *Device) Alloc(size int64) (*Buffer, error) {
	if size <= 0 {
		return nil, fmt.Errorf("cuda: alloc %d bytes: the size must be positive", size)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("cuda: alloc on %s: %w", d, ErrClosed)
	}
	var b *Buffer
	err := d.do(func() error {
		p, err := cu.MemAlloc(size)
		if err != nil {
			return fmt.Errorf("cuMemAlloc: %w", err)
		}
		h, err := ipcGetHandle(p)
		if err != nil {
			return errors.Join(fmt.Errorf("cuIpcGetMemHandle: %w", err), cu.MemFree(p))
		}
		b = &Buffer{dev: d, ptr: p, size: size, handle: h}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cuda: alloc %d bytes on %s: %w", size, d, err)
	}
	d.buffers[b.handle] = b
	return b, nil
}

// Open maps the buffer another process exported as h, claimed to be size
// bytes long, into this process (cuIpcOpenMemHandle). The claim is checked
// against the size of the allocation h names: a larger claim fails with
// ErrOutOfRange. Opening a handle that is already open returns the same
// *PeerBuffer, so a sender opens each receiver buffer once however many
// transfers go into it; a different size for an open handle is an error.
// A handle exported by this process fails with ErrOwnHandle.
func (d *Device) Open(h Handle, size int64) (*PeerBuffer, error) {
	if size <= 0 {
		return nil, fmt.Errorf("cuda: open handle: claimed size %d must be positive", size)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("cuda: open handle on %s: %w", d, ErrClosed)
	}
	if _, own := d.buffers[h]; own {
		return nil, fmt.Errorf("cuda: open handle: %w; use the Buffer itself", ErrOwnHandle)
	}
	if p, ok := d.peers[h]; ok {
		if p.size != size {
			return nil, fmt.Errorf("cuda: open handle: it is already open as a %d-byte buffer, not %d bytes", p.size, size)
		}
		return p, nil
	}
	var p *PeerBuffer
	err := d.do(func() error {
		ptr, err := ipcOpenHandle(h)
		if err != nil {
			return fmt.Errorf("cuIpcOpenMemHandle: %w", err)
		}
		actual, _, err := ptr.AddressRange()
		if err != nil {
			return errors.Join(fmt.Errorf("cuMemGetAddressRange: %w", err), ipcCloseHandle(ptr))
		}
		if size > actual {
			return errors.Join(fmt.Errorf("claimed size %d is larger than the %d-byte allocation the handle maps: %w", size, actual, ErrOutOfRange), ipcCloseHandle(ptr))
		}
		p = &PeerBuffer{dev: d, ptr: ptr, size: size, handle: h}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cuda: open handle on %s: %w", d, err)
	}
	d.peers[h] = p
	return p, nil
}

// ReadDevice copies len(p) bytes of this process's device memory at src (a
// tensor a cuda room handed out, or any pointer of the primary context) to
// p, synchronously (cuMemcpyDtoH). src is the caller's and is not checked.
func (d *Device) ReadDevice(p []byte, src DevicePtr) error {
	if len(p) == 0 {
		return nil
	}
	if src == 0 {
		return fmt.Errorf("cuda: read device memory: the source pointer is nil")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("cuda: read device memory on %s: %w", d, ErrClosed)
	}
	if err := d.do(func() error { return cu.MemcpyDtoH(unsafe.Pointer(&p[0]), cu.DevicePtr(src), int64(len(p))) }); err != nil {
		return fmt.Errorf("cuda: read %d bytes of device memory at %#x: cuMemcpyDtoH: %w", len(p), uintptr(src), err)
	}
	return nil
}

// NewCopier creates a Copier with its own non-blocking stream.
func (d *Device) NewCopier() (*Copier, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("cuda: new copier on %s: %w", d, ErrClosed)
	}
	c := &Copier{dev: d, pending: map[*Transfer]struct{}{}}
	err := d.do(func() (err error) {
		c.stream, err = cu.MakeStream(cu.NonBlocking)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cuda: new copier on %s: create stream: %w", d, err)
	}
	d.copiers[c] = struct{}{}
	return c, nil
}

// Close closes every Copier (waiting for their copies), closes every open
// PeerBuffer, frees every Buffer, then releases the primary context. It is
// idempotent; errors are joined, never dropped. Later calls on the device
// or anything made from it return ErrClosed.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	var copiers []*Copier
	for c := range d.copiers {
		copiers = append(copiers, c)
	}
	var peers []*PeerBuffer
	for _, p := range d.peers {
		peers = append(peers, p)
	}
	var buffers []*Buffer
	for _, b := range d.buffers {
		buffers = append(buffers, b)
	}
	d.mu.Unlock()

	var errs []error
	for _, c := range copiers {
		errs = append(errs, c.Close())
	}
	for _, p := range peers {
		errs = append(errs, p.Close())
	}
	for _, b := range buffers {
		errs = append(errs, b.Free())
	}
	if err := d.dev.ReleasePrimaryCtx(); err != nil {
		errs = append(errs, fmt.Errorf("cuda: release the primary context of %s: %w", d, err))
	}
	return errors.Join(errs...)
}

//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"unsafe"

	"gorgonia.org/cu"
)

// Memory is device memory a Copier writes into: a *Buffer this process
// allocated or a *PeerBuffer it opened. The interface is sealed.
type Memory interface {
	// Ptr returns the start of the memory in this process's address space.
	Ptr() DevicePtr
	// Size returns its length in bytes; no copy goes past it.
	Size() int64
	// acquire holds the memory open until release is called.
	acquire() (r region, release func(), err error)
}

// region is Memory held open for one operation.
type region struct {
	dev  *Device
	ptr  cu.DevicePtr
	size int64
}

// Buffer is device memory this process allocated (the receiver side),
// exported to other processes by its Handle. Its methods are safe for
// concurrent use.
type Buffer struct {
	dev    *Device
	ptr    cu.DevicePtr
	size   int64
	handle Handle

	mu    sync.RWMutex
	freed bool
}

// Ptr returns the start of the buffer on the device.
func (b *Buffer) Ptr() DevicePtr { return DevicePtr(b.ptr) }

// Size returns the buffer's length in bytes.
func (b *Buffer) Size() int64 { return b.size }

// Handle returns the buffer's CUDA IPC handle, for a descriptor.
func (b *Buffer) Handle() Handle { return b.handle }

func (b *Buffer) acquire() (region, func(), error) {
	b.mu.RLock()
	if b.freed {
		b.mu.RUnlock()
		return region{}, nil, fmt.Errorf("buffer %s: %w", b.handle.short(), ErrClosed)
	}
	return region{dev: b.dev, ptr: b.ptr, size: b.size}, b.mu.RUnlock, nil
}

// ReadAt copies len(p) bytes at off from the buffer to p, synchronously
// (cuMemcpyDtoH). A range that does not lie inside the buffer fails with
// ErrOutOfRange and reads nothing. It does not wait for a Copier's
// transfers in flight: wait for them first.
func (b *Buffer) ReadAt(p []byte, off int64) (int, error) {
	n := int64(len(p))
	if err := checkRange("read", b.size, off, n); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	r, release, err := b.acquire()
	if err != nil {
		return 0, fmt.Errorf("cuda: read: %w", err)
	}
	defer release()
	if err := r.dev.do(func() error { return cu.MemcpyDtoH(unsafe.Pointer(&p[0]), r.ptr+cu.DevicePtr(off), n) }); err != nil {
		return 0, fmt.Errorf("cuda: read %d bytes at %d: cuMemcpyDtoH: %w", n, off, err)
	}
	return len(p), nil
}

// WriteAt copies p into the buffer at off, synchronously (cuMemcpyHtoD). A
// range that does not lie inside the buffer fails with ErrOutOfRange and
// writes nothing.
func (b *Buffer) WriteAt(p []byte, off int64) (int, error) {
	n := int64(len(p))
	if err := checkRange("write", b.size, off, n); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	r, release, err := b.acquire()
	if err != nil {
		return 0, fmt.Errorf("cuda: write: %w", err)
	}
	defer release()
	if err := r.dev.do(func() error { return cu.MemcpyHtoD(r.ptr+cu.DevicePtr(off), unsafe.Pointer(&p[0]), n) }); err != nil {
		return 0, fmt.Errorf("cuda: write %d bytes at %d: cuMemcpyHtoD: %w", n, off, err)
	}
	return len(p), nil
}

// Free waits for the work queued in the device's context, then frees the
// memory. It is idempotent. A peer that still has the handle open keeps
// a mapping the driver no longer backs: free only once the room is over.
func (b *Buffer) Free() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.freed {
		return nil
	}
	b.freed = true
	d := b.dev
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.buffers, b.handle)
	err := d.do(func() error {
		return errors.Join(cu.Synchronize(), cu.MemFree(b.ptr))
	})
	if err != nil {
		return fmt.Errorf("cuda: free buffer %s: %w", b.handle.short(), err)
	}
	return nil
}

// PeerBuffer is a Buffer of another process, opened by its handle (the
// sender side). Device.Open returns the same PeerBuffer for the same handle
// until it is closed. Its methods are safe for concurrent use.
type PeerBuffer struct {
	dev    *Device
	ptr    cu.DevicePtr
	size   int64
	handle Handle

	mu     sync.RWMutex
	closed bool
}

// Ptr returns the start of the mapping in this process.
func (p *PeerBuffer) Ptr() DevicePtr { return DevicePtr(p.ptr) }

// Size returns the size claimed when it was opened, checked against the
// allocation.
func (p *PeerBuffer) Size() int64 { return p.size }

// Handle returns the handle it was opened with.
func (p *PeerBuffer) Handle() Handle { return p.handle }

func (p *PeerBuffer) acquire() (region, func(), error) {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return region{}, nil, fmt.Errorf("peer buffer %s: %w", p.handle.short(), ErrClosed)
	}
	return region{dev: p.dev, ptr: p.ptr, size: p.size}, p.mu.RUnlock, nil
}

// Close waits for the work queued in the device's context (copies into the
// mapping included), then unmaps it (cuIpcCloseMemHandle). Every holder of
// the shared *PeerBuffer sees it closed: close it once, when the receiver's
// buffer is gone. It is idempotent; a later Open of the handle maps it
// again.
func (p *PeerBuffer) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	d := p.dev
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.peers, p.handle)
	err := d.do(func() error {
		return errors.Join(cu.Synchronize(), ipcCloseHandle(p.ptr))
	})
	if err != nil {
		return fmt.Errorf("cuda: close peer buffer %s: %w", p.handle.short(), err)
	}
	return nil
}

var (
	_ Memory      = (*Buffer)(nil)
	_ Memory      = (*PeerBuffer)(nil)
	_ io.ReaderAt = (*Buffer)(nil)
	_ io.WriterAt = (*Buffer)(nil)
)

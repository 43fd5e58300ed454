//go:build !cuda

package cuda

// This file stands in for the implementation in builds without -tags cuda:
// Init fails with ErrNoCUDA, so none of the other methods is ever reached
// on a real value; they exist so that callers compile either way.

// Device is one GPU's primary context. Without -tags cuda it cannot be
// created.
type Device struct{}

// Init returns ErrNoCUDA: this build has no CUDA support.
func Init(ordinal int) (*Device, error) { return nil, ErrNoCUDA }

// Ordinal returns -1.
func (d *Device) Ordinal() int { return -1 }

// String names the missing backend.
func (d *Device) String() string { return "cuda (not built)" }

// Alloc returns ErrNoCUDA.
func (d *Device) Alloc(size int64) (*Buffer, error) { return nil, ErrNoCUDA }

// Open returns ErrNoCUDA.
func (d *Device) Open(h Handle, size int64) (*PeerBuffer, error) { return nil, ErrNoCUDA }

// ReadDevice returns ErrNoCUDA.
func (d *Device) ReadDevice(p []byte, src DevicePtr) error { return ErrNoCUDA }

// NewCopier returns ErrNoCUDA.
func (d *Device) NewCopier() (*Copier, error) { return nil, ErrNoCUDA }

// Close does nothing.
func (d *Device) Close() error { return nil }

// Memory is device memory a Copier writes into: a *Buffer or a *PeerBuffer.
type Memory interface {
	Ptr() DevicePtr
	Size() int64
	memory()
}

// Buffer is device memory this process allocated.
type Buffer struct{}

// Ptr returns 0.
func (b *Buffer) Ptr() DevicePtr { return 0 }

// Size returns 0.
func (b *Buffer) Size() int64 { return 0 }

// Handle returns the zero handle.
func (b *Buffer) Handle() Handle { return Handle{} }

// ReadAt returns ErrNoCUDA.
func (b *Buffer) ReadAt(p []byte, off int64) (int, error) { return 0, ErrNoCUDA }

// WriteAt returns ErrNoCUDA.
func (b *Buffer) WriteAt(p []byte, off int64) (int, error) { return 0, ErrNoCUDA }

// Free does nothing.
func (b *Buffer) Free() error { return nil }

func (b *Buffer) memory() {}

// PeerBuffer is another process's Buffer opened through its handle.
type PeerBuffer struct{}

// Ptr returns 0.
func (p *PeerBuffer) Ptr() DevicePtr { return 0 }

// Size returns 0.
func (p *PeerBuffer) Size() int64 { return 0 }

// Handle returns the zero handle.
func (p *PeerBuffer) Handle() Handle { return Handle{} }

// Close does nothing.
func (p *PeerBuffer) Close() error { return nil }

func (p *PeerBuffer) memory() {}

// Copier copies into device memory on one stream.
type Copier struct{}

// Copy returns ErrNoCUDA.
func (c *Copier) Copy(dst Memory, off int64, src DevicePtr, n int64) (*Transfer, error) {
	return nil, ErrNoCUDA
}

// CopyFromHost returns ErrNoCUDA.
func (c *Copier) CopyFromHost(dst Memory, off int64, src []byte) (*Transfer, error) {
	return nil, ErrNoCUDA
}

// Sync returns ErrNoCUDA.
func (c *Copier) Sync() error { return ErrNoCUDA }

// Close does nothing.
func (c *Copier) Close() error { return nil }

// Transfer is one copy in flight.
type Transfer struct{}

// Wait returns ErrNoCUDA.
func (t *Transfer) Wait() error { return ErrNoCUDA }

// Done returns ErrNoCUDA.
func (t *Transfer) Done() (bool, error) { return false, ErrNoCUDA }

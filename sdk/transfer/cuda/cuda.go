package cuda

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// Name is the backend's name in logs, errors and config.
const Name = "cuda"

// Sentinel errors callers branch on with errors.Is. Except ErrNoCUDA, which
// Init returns as is, they come wrapped with the operation that failed
// ("cuda: copy: bytes [0, 10) are outside the 8-byte buffer: outside the
// buffer").
var (
	// ErrNoCUDA is returned by Init in a build without -tags cuda.
	ErrNoCUDA = errors.New("cuda: phased was built without -tags cuda; rebuild with `make cuda` to use the cuda transfer backend")
	// ErrClosed is returned by any method of a device, buffer or copier
	// that was closed or freed.
	ErrClosed = errors.New("already closed")
	// ErrOutOfRange is returned when an offset or length falls outside a
	// buffer, or a claimed size exceeds the allocation a handle maps.
	ErrOutOfRange = errors.New("outside the buffer")
	// ErrOwnHandle is returned by Open for a handle this process exported:
	// CUDA cannot open it here; use the Buffer directly.
	ErrOwnHandle = errors.New("handle was exported by this process")
)

// HandleSize is the size of a CUDA IPC memory handle (CU_IPC_HANDLE_SIZE).
const HandleSize = 64

// Handle is a CUDA IPC memory handle (CUipcMemHandle): 64 opaque bytes that
// name one device allocation to other processes on the same host.
type Handle [HandleSize]byte

// String returns the handle in hex, the form ParseHandle reads.
func (h Handle) String() string { return hex.EncodeToString(h[:]) }

// ParseHandle reads a handle written by Handle.String.
func ParseHandle(s string) (Handle, error) {
	var h Handle
	if hex.DecodedLen(len(s)) != HandleSize {
		return h, fmt.Errorf("cuda: handle %q: want %d hex digits, got %d", s, 2*HandleSize, len(s))
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("cuda: handle %q: %w", s, err)
	}
	return h, nil
}

// short names a handle in errors by its first 8 bytes.
func (h Handle) short() string { return hex.EncodeToString(h[:8]) }

// DevicePtr is an address in device memory (CUdeviceptr) in this process's
// address space.
type DevicePtr uintptr

// checkRange reports whether bytes [off, off+n) lie inside a buffer of size
// bytes; what names the operation in the error.
func checkRange(what string, size, off, n int64) error {
	switch {
	case off < 0 || n < 0:
		return fmt.Errorf("cuda: %s: negative offset %d or length %d: %w", what, off, n, ErrOutOfRange)
	case off > size || n > size-off:
		return fmt.Errorf("cuda: %s: bytes [%d, %d) are outside the %d-byte buffer: %w", what, off, uint64(off)+uint64(n), size, ErrOutOfRange)
	}
	return nil
}

// Package tensor holds the tensor types that phases exchange: a dtype, a
// shape, little-endian bytes, and the XXH3-64 checksum that every tensor
// carries across a hop.
package tensor

import (
	"errors"
	"fmt"

	"unsafe"

	"github.com/zeebo/xxh3"
)

// DType is the element type of a tensor. Its numeric values are part of the
// wire format (TensorHeader.dtype): never renumber them.
type DType uint32

// The element types a tensor may have.
const (
	Invalid DType = iota
	Float32
	Float16
	BFloat16
	Int32
	Int64
	Uint8
)

var dtypeNames = [...]string{"invalid", "float32", "float16", "bfloat16", "int32", "int64", "uint8"}
var dtypeSizes = [...]int64{0, 4, 2, 2, 4, 8, 1}

// String returns the dtype's name, e.g. "float32".
func (d DType) String() string {
	if int(d) < len(dtypeNames) {
		return dtypeNames[d]
	}
	return fmt.Sprintf("dtype(%d)", uint32(d))
}

// Size returns the size of one element in bytes, 0 for an unknown dtype.
func (d DType) Size() int64 {
	if int(d) < len(dtypeSizes) {
		return dtypeSizes[d]
	}
	return 0
}

// Valid reports whether d is a known dtype.
func (d DType) Valid() bool { return d != Invalid && int(d) < len(dtypeNames) }

// MaxBytes bounds the size of a single tensor (1 TiB); larger shapes are
// refused as hostile rather than overflowing.
const MaxBytes = 1 << 40

// ErrBadSpec is wrapped by every error about an invalid dtype or shape.
var ErrBadSpec = errors.New("bad tensor spec")

// Spec names a tensor and gives its dtype and shape.
type Spec struct {
	Name  string
	DType DType
	Shape []int64
}

// NumBytes returns the size in bytes of a tensor of this spec. It fails for
// an unknown dtype, a negative dimension or a size over MaxBytes.
func (s Spec) NumBytes() (int64, error) {
	if !s.DType.Valid() {
		return 0, fmt.Errorf("%w: tensor %q: unknown dtype %d", ErrBadSpec, s.Name, uint32(s.DType))
	}
	n := s.DType.Size()
	for _, d := range s.Shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: tensor %q: negative dimension %d", ErrBadSpec, s.Name, d)
		}
		if d != 0 && n > MaxBytes/d {
			return 0, fmt.Errorf("%w: tensor %q: shape %v exceeds %d bytes", ErrBadSpec, s.Name, s.Shape, int64(MaxBytes))
		}
		n *= d
	}
	return n, nil
}

// TotalBytes is the bytes of ts as their specs say; a spec whose size
// cannot be computed counts 0.
func TotalBytes(ts []Tensor) int64 {
	var n int64
	for _, t := range ts {
		if b, err := t.NumBytes(); err == nil {
			n += b
		}
	}
	return n
}

// Equal reports whether two specs have the same name, dtype and shape.
func (s Spec) Equal(o Spec) bool {
	if s.Name != o.Name || s.DType != o.DType || len(s.Shape) != len(o.Shape) {
		return false
	}
	for i := range s.Shape {
		if s.Shape[i] != o.Shape[i] {
			return false
		}
	}
	return true
}

// String formats the spec as name:dtype[d0 d1 ...].
func (s Spec) String() string { return fmt.Sprintf("%s:%s%v", s.Name, s.DType, s.Shape) }

// Tensor is a spec with its data: len(Data) equals the spec's NumBytes.
// Multi-byte elements are little-endian.
//
// A tensor in GPU memory has DevicePtr set, the address of its NumBytes
// bytes in this process's CUDA primary context (the one PyTorch and CuPy
// use), and no Data. Only cuda rooms move such tensors, and a cuda room
// hands its receiver tensors of this kind.
type Tensor struct {
	Spec
	Data      []byte
	DevicePtr uintptr
}

// OnDevice reports whether the tensor's bytes are in GPU memory.
func (t Tensor) OnDevice() bool { return t.DevicePtr != 0 }

// New returns a zeroed tensor of the given spec.
func New(s Spec) (Tensor, error) {
	n, err := s.NumBytes()
	if err != nil {
		return Tensor{}, err
	}
	return Tensor{Spec: s, Data: make([]byte, n)}, nil
}

// FromFloat32 returns a float32 tensor holding a copy of v. It fails when
// len(v) does not match the shape.
func FromFloat32(name string, shape []int64, v []float32) (Tensor, error) {
	t, err := New(Spec{Name: name, DType: Float32, Shape: shape})
	if err != nil {
		return Tensor{}, err
	}
	if int64(len(v))*4 != int64(len(t.Data)) {
		return Tensor{}, fmt.Errorf("%w: tensor %q: %d values for shape %v", ErrBadSpec, name, len(v), shape)
	}
	copy(t.Float32s(), v)
	return t, nil
}

// Float32s returns the data as a []float32 view sharing memory with Data
// (phased runs on little-endian hosts only). It returns nil when the dtype is
// not float32.
func (t Tensor) Float32s() []float32 {
	if t.DType != Float32 || len(t.Data) < 4 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&t.Data[0])), len(t.Data)/4)
}

// Validate checks that the data length matches the spec, or, for a tensor
// on the device, that it has no host data.
func (t Tensor) Validate() error {
	n, err := t.NumBytes()
	if err != nil {
		return err
	}
	if t.OnDevice() {
		if t.Data != nil {
			return fmt.Errorf("%w: tensor %q: has both device memory and %d bytes of host data", ErrBadSpec, t.Name, len(t.Data))
		}
		return nil
	}
	if int64(len(t.Data)) != n {
		return fmt.Errorf("%w: tensor %q: %d bytes of data for %s (%d bytes)", ErrBadSpec, t.Name, len(t.Data), t.Spec, n)
	}
	return nil
}

// ChecksumBlock is the block size of Checksum: tensors are hashed 256 KiB
// at a time, so that a sender can hash each block right after copying it
// (while it is in the core's L2 cache) and a receiver can verify blocks
// while the sender is still copying the next ones.
const ChecksumBlock = 256 << 10

// Checksum returns the checksum every tensor carries across a hop: the
// XXH3-64 of b's first ChecksumBlock bytes (seed 0), then of each following
// block seeded with the previous result. For b of up to one block it is
// the plain XXH3-64 of b. Each block hashes at memory speed or better, and
// a hop checksums every byte twice, once on each side.
func Checksum(b []byte) uint64 {
	var c Chain
	for off := 0; off < len(b); off += ChecksumBlock {
		c.Block(b[off:min(off+ChecksumBlock, len(b))])
	}
	return c.Sum()
}

// Chain computes Checksum block by block: give it the tensor's bytes in
// order, ChecksumBlock bytes at a time (the last block may be shorter).
// The zero value is ready to use.
type Chain struct {
	sum     uint64
	started bool
}

// Block adds the next block.
func (c *Chain) Block(b []byte) {
	if !c.started {
		c.sum, c.started = xxh3.Hash(b), true
		return
	}
	c.sum = xxh3.HashSeed(b, c.sum)
}

// Sum returns the checksum of the blocks added so far (of no bytes, if
// none).
func (c *Chain) Sum() uint64 {
	if !c.started {
		return xxh3.Hash(nil)
	}
	return c.sum
}

package cuda

import "io"

// The method sets below are what both the cuda-tagged implementation and
// the untagged stub provide; the guards at the end of this file, compiled in
// both builds, keep the two from drifting apart (go vet with and without
// -tags cuda checks both).

type deviceAPI interface {
	Ordinal() int
	String() string
	Alloc(size int64) (*Buffer, error)
	Open(h Handle, size int64) (*PeerBuffer, error)
	NewCopier() (*Copier, error)
	ReadDevice(p []byte, src DevicePtr) error
	Close() error
}

type bufferAPI interface {
	Memory
	Handle() Handle
	io.ReaderAt
	io.WriterAt
	Free() error
}

type peerBufferAPI interface {
	Memory
	Handle() Handle
	Close() error
}

type copierAPI interface {
	Copy(dst Memory, off int64, src DevicePtr, n int64) (*Transfer, error)
	CopyFromHost(dst Memory, off int64, src []byte) (*Transfer, error)
	Sync() error
	Close() error
}

type transferAPI interface {
	Wait() error
	Done() (bool, error)
}

var (
	_ func(int) (*Device, error) = Init
	_ deviceAPI                  = (*Device)(nil)
	_ bufferAPI                  = (*Buffer)(nil)
	_ peerBufferAPI              = (*PeerBuffer)(nil)
	_ copierAPI                  = (*Copier)(nil)
	_ transferAPI                = (*Transfer)(nil)
)

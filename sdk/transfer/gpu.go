package transfer

import (
	"errors"
	"fmt"

	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer/cuda"
)

// gpu is what the cuda backend uses of a GPU: the cuda package's Device
// and one Copier (one stream) in a build with -tags cuda. Without the tag,
// opening it fails with cuda.ErrNoCUDA. Unit tests substitute a fake.
type gpu interface {
	// Alloc allocates a receiver's buffers, exported through an IPC
	// handle.
	Alloc(size int64) (gpuBuffer, error)
	// Open maps another process's buffer by its handle (sender).
	Open(h cuda.Handle, size int64) (gpuPeer, error)
	// CopyFromHost and Copy issue a copy into dst at off on the stream
	// and return at once; the copies run in the order issued.
	CopyFromHost(dst gpuPeer, off int64, src []byte) (gpuCopy, error)
	Copy(dst gpuPeer, off int64, src uintptr, n int64) (gpuCopy, error)
	// ToHost copies device memory of this process to dst, synchronously.
	ToHost(dst []byte, src uintptr) error
	Close() error
}

type gpuBuffer interface {
	Handle() cuda.Handle
	Ptr() uintptr
	Free() error
}

type gpuPeer interface{ Close() error }

type gpuCopy interface{ Wait() error }

// openGPU opens device ordinal for a Manager.
var openGPU = func(ordinal int) (gpu, error) {
	dev, err := cuda.Init(ordinal)
	if err != nil {
		return nil, err
	}
	cp, err := dev.NewCopier()
	if err != nil {
		return nil, errors.Join(err, dev.Close())
	}
	return &cudaGPU{dev: dev, cp: cp}, nil
}

type cudaGPU struct {
	dev *cuda.Device
	cp  *cuda.Copier
}

type cudaBuffer struct{ *cuda.Buffer }

func (b cudaBuffer) Ptr() uintptr { return uintptr(b.Buffer.Ptr()) }

func (g *cudaGPU) Alloc(size int64) (gpuBuffer, error) {
	b, err := g.dev.Alloc(size)
	if err != nil {
		return nil, err
	}
	return cudaBuffer{b}, nil
}

func (g *cudaGPU) Open(h cuda.Handle, size int64) (gpuPeer, error) {
	p, err := g.dev.Open(h, size)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (g *cudaGPU) CopyFromHost(dst gpuPeer, off int64, src []byte) (gpuCopy, error) {
	t, err := g.cp.CopyFromHost(dst.(*cuda.PeerBuffer), off, src)
	if err != nil {
		return nil, err
	}
	return t, nil
}

func (g *cudaGPU) Copy(dst gpuPeer, off int64, src uintptr, n int64) (gpuCopy, error) {
	t, err := g.cp.Copy(dst.(*cuda.PeerBuffer), off, cuda.DevicePtr(src), n)
	if err != nil {
		return nil, err
	}
	return t, nil
}

func (g *cudaGPU) ToHost(dst []byte, src uintptr) error {
	return g.dev.ReadDevice(dst, cuda.DevicePtr(src))
}

func (g *cudaGPU) Close() error { return errors.Join(g.cp.Close(), g.dev.Close()) }

// CopyToHost copies the bytes of a tensor in device memory, such as one
// that Receive returned for a cuda room, into dst, which must be exactly as
// long as the tensor; a host tensor's Data is copied as is. It needs
// Config.CUDA for device tensors.
func (m *Manager) CopyToHost(dst []byte, t tensor.Tensor) error {
	n, err := t.NumBytes()
	if err != nil {
		return fmt.Errorf("transfer: copy to host: %w", err)
	}
	if int64(len(dst)) != n {
		return fmt.Errorf("transfer: copy to host: tensor %q is %d bytes, dst holds %d", t.Name, n, len(dst))
	}
	if !t.OnDevice() {
		if err := t.Validate(); err != nil {
			return fmt.Errorf("transfer: copy to host: %w", err)
		}
		copy(dst, t.Data)
		return nil
	}
	if m.gpu == nil { // set by Start, read-only afterwards
		return fmt.Errorf("transfer: copy to host: tensor %q: %w", t.Name, errNoGPU)
	}
	if err := m.gpu.ToHost(dst, t.DevicePtr); err != nil {
		return fmt.Errorf("transfer: copy to host: tensor %q: %w", t.Name, err)
	}
	return nil
}

// deviceSegment allocates a cuda room's buffers in device memory. It has no
// file and no host mapping; its last reference frees it.
func (m *Manager) deviceSegment(size uint64) (*segment, error) {
	if m.gpu == nil {
		return nil, errNoGPU
	}
	buf, err := m.gpu.Alloc(int64(size))
	if err != nil {
		return nil, fmt.Errorf("allocate %d bytes of device memory: %w", size, err)
	}
	return &segment{size: size, dev: buf, refs: 1}, nil
}

var errNoGPU = errors.New("a cuda room needs a GPU: set Config.CUDA (the phase's device = \"cuda\") and build with -tags cuda")

// maxDeviceJobs is how many cuda Sends may have copies in flight at once;
// beyond, the worker waits for the completer.
const maxDeviceJobs = 64

// deviceJob is a cuda room's Send whose copies are in flight.
type deviceJob struct {
	j      *job
	d      *descriptor
	hs     []header
	copies []gpuCopy
	synced <-chan error // the Transferring frame was sent
}

// issueDevice checks the tensors against the descriptor, opens the
// receiver's buffer (once per room), has the owner send Transferring, and
// issues one copy per tensor on the stream, host tensors from their Data
// and device tensors from their DevicePtr, without waiting for them.
func (m *Manager) issueDevice(j *job, d *descriptor) (*deviceJob, error) {
	r := j.r
	if m.gpu == nil {
		return nil, errNoGPU
	}
	tensors, err := selectTensors(j.tensors, d.buffers, true)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	peer := r.peer
	m.mu.Unlock()
	if peer == nil {
		if peer, err = m.gpu.Open(d.handle, int64(d.segmentSize)); err != nil {
			return nil, fmt.Errorf("open the receiver's device memory: %w", err)
		}
		m.mu.Lock()
		r.peer = peer // closed by Remove, once the worker let go
		m.mu.Unlock()
	}
	synced, err := m.postTransferring(r, d)
	if err != nil {
		return nil, err
	}
	dj := &deviceJob{j: j, d: d, synced: synced, hs: make([]header, len(tensors))}
	for i, t := range tensors {
		b := d.buffers[i]
		dj.hs[i] = header{spec: t.Spec, length: b.length}
		if b.length == 0 {
			continue
		}
		var c gpuCopy
		if t.OnDevice() {
			c, err = m.gpu.Copy(peer, int64(b.offset), t.DevicePtr, int64(b.length))
		} else {
			c, err = m.gpu.CopyFromHost(peer, int64(b.offset), t.Data)
		}
		if err != nil {
			// What was issued still runs: wait for it before the room
			// lets go of the receiver's memory.
			return nil, errors.Join(fmt.Errorf("send: tensor %d %q: %w", i, t.Name, err), dj.wait(m))
		}
		dj.copies = append(dj.copies, c)
	}
	return dj, nil
}

// wait waits for every copy, in order, and for the Transferring frame.
func (dj *deviceJob) wait(m *Manager) error {
	var errs []error
	for _, c := range dj.copies {
		if err := c.Wait(); err != nil {
			errs = append(errs, err)
		}
	}
	dj.copies = nil
	if dj.synced != nil {
		if err := m.await(dj.synced); err != nil {
			errs = append(errs, fmt.Errorf("sync Transferring: %w", err))
		}
		dj.synced = nil
	}
	return errors.Join(errs...)
}

// complete is the goroutine that finishes cuda Sends: it waits for each
// job's copies, in the order the worker issued them (the stream's order),
// and then syncs Success or Failed as the worker does for other rooms.
// Meanwhile the worker goes on with the next jobs, so that many copies are
// in flight. It runs while the Manager has a GPU, until Release, and
// finishes every job it was handed.
func (m *Manager) complete() {
	defer close(m.completerDone)
	for {
		select {
		case dj := <-m.deviceJobs:
			dj.j.done <- m.finish(dj.j, dj.d, dj.hs, dj.wait(m))
		case <-m.workerDone: // the worker hands over no more jobs
			for {
				select {
				case dj := <-m.deviceJobs:
					dj.j.done <- m.finish(dj.j, dj.d, dj.hs, dj.wait(m))
				default:
					return
				}
			}
		}
	}
}

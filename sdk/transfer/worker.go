package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"

	"golang.org/x/sys/unix"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// chunkSize is how much the worker copies between two checks for removal
// and two reports of progress: one checksum block.
const chunkSize = tensor.ChecksumBlock

// wakeEvery is how many blocks a receiver that sleeps on the control
// block may be behind before the worker wakes it. A receiver hashes a
// block about three times as fast as the worker copies and hashes one,
// so it sleeps between blocks, and on a VM each wake-up costs the sender
// tens of µs (a futex wake that interrupts another vCPU): once per MiB,
// not once per block.
const wakeEvery = 4

// afterChunk, when set, is called by the transfer worker after each chunk
// it copied: tests pause a transfer there. Nil in production.
var afterChunk func(m *Manager, room uint64)

// beforeLend, when set, is called by the transfer worker before it marks
// the segments of a Send lent: tests remove the receiver's side there.
// Nil in production.
var beforeLend func(m *Manager)

// zmqWindow is how many bytes of a zmq room the socket owner queues in one
// command.
const zmqWindow = 16 << 20

// errAborted stops a copy whose room is being removed.
var errAborted = errors.New("aborted: the room is being removed")

// job is one Send handed to the transfer worker.
type job struct {
	ctx     context.Context
	r       *room
	tensors []tensor.Tensor
	done    chan error // capacity 1: the Send's result
}

// work is the transfer worker goroutine: it runs one job at a time until
// Release closes quit. A cuda job it only issues: the completer finishes
// it while the worker goes on.
func (m *Manager) work() {
	defer close(m.workerDone)
	defer func() {
		if err := m.maps.close(); err != nil {
			m.log.Error("unmap receiver segments", "error", err)
		}
	}()
	// A receiver that shrinks its segment under us raises SIGBUS; turn it
	// into a panic that copyChunks recovers, failing only that room.
	debug.SetPanicOnFault(true)
	for {
		select {
		case j := <-m.jobs:
			m.transfer(j)
			m.maps.sweep() // after the job's answer: off its path
		case <-m.quit:
			return
		}
	}
}

// transfer runs one job while holding its room (busy), so that Remove waits
// for it to let go, and answers it on j.done, or hands it to the completer.
func (m *Manager) transfer(j *job) {
	r := j.r
	m.mu.Lock()
	if err := roomErrLocked(r); err != nil {
		m.mu.Unlock()
		j.done <- err
		return
	}
	r.busy = true
	d, file := r.desc, r.file
	r.file = nil // the job's now
	m.mu.Unlock()

	var hs []header
	var err error
	switch {
	case d.backend != r.backend:
		err = fmt.Errorf("the receiver's descriptor is for the %s backend, the room is %s", d.backend, r.backend)
	case r.backend == sdk.BackendZMQ:
		hs, err = m.streamIn(j, d)
	case r.backend == sdk.BackendCUDA:
		var dj *deviceJob
		if dj, err = m.issueDevice(j, d); err == nil {
			select {
			case m.deviceJobs <- dj:
				return
			case <-m.quit:
				err = errors.Join(ErrReleased, dj.wait(m))
			}
		}
	default:
		hs, err = m.copyIn(j, d, file)
		file = nil
	}
	if file != nil { // not a shm job after all
		err = errors.Join(err, closeFd(file.fd))
	}
	j.done <- m.finish(j, d, hs, err)
}

// finish ends a job whose bytes were written (err == nil) or not: it syncs
// Success with the headers, or Failed with the reason, sets the room's
// status, lets go of the room, and returns the Send's result.
func (m *Manager) finish(j *job, d *descriptor, hs []header, err error) error {
	r := j.r
	defer func() {
		m.mu.Lock()
		r.busy = false
		r.notify()
		m.mu.Unlock()
	}()
	if err == nil && !d.fast() { // the fast path ended in the control block
		var frame []byte
		if frame, err = encodeStatus(r.id, d.generation, Success, "", hs); err == nil {
			if err = m.call(func(o *owner) error { return o.send(r.id, frame) }); err != nil {
				err = fmt.Errorf("sync Success: %w", err)
			}
		}
	}

	m.mu.Lock()
	if r.removing {
		m.mu.Unlock()
		return fmt.Errorf("%w: room %d", ErrRemoved, r.id)
	}
	if r.status == Failed { // failed meanwhile (its peer vanished)
		defer m.mu.Unlock()
		return roomErrLocked(r)
	}
	if err == nil {
		m.setStatusLocked(r, Success, "")
		r.drained = d.fast()
		m.mu.Unlock()
		m.log.Debug("sent", "room", r.id, "tensors", len(hs))
		return nil
	}
	m.setStatusLocked(r, Failed, err.Error())
	m.mu.Unlock()
	if frame, ferr := encodeStatus(r.id, d.generation, Failed, err.Error(), nil); ferr == nil {
		if ferr = m.call(func(o *owner) error { return o.send(r.id, frame) }); ferr != nil {
			m.log.Warn("sync Failed to the receiver", "room", r.id, "error", ferr)
		}
	}
	return fmt.Errorf("%w: room %d: %s", ErrFailed, r.id, err)
}

// copyIn checks the tensors against the descriptor, maps the receiver's
// segment, syncs Transferring, copies and returns the headers for Success.
// file is the segment, if it was opened when the descriptor arrived;
// copyIn closes it or hands it to the cache.
func (m *Manager) copyIn(j *job, d *descriptor, file *peerFile) (_ []header, err error) {
	r := j.r
	tensors, err := selectTensors(j.tensors, d.buffers, false)
	if err != nil {
		if file != nil {
			err = errors.Join(err, closeFd(file.fd))
		}
		return nil, err
	}
	data, fd, done, err := m.maps.get(m.cfg.ShmDir, d.segment, d.segmentSize, file)
	if err != nil {
		return nil, err
	}
	faulted := false
	defer func() {
		if derr := done(faulted); derr != nil {
			err = errors.Join(err, fmt.Errorf("segment %s: %w", d.segment, derr))
		}
	}()

	// The receiver learns the progress from the control block. On the
	// fast path it learns the end there too, and no frame is sent; else
	// the worker copies while the owner sends Transferring, and checks
	// that it was sent before Success goes out on the same socket.
	if d.fast() {
		if !m.toTransferring(r) {
			return nil, errAborted
		}
	} else {
		synced, err := m.postTransferring(r, d)
		if err != nil {
			return nil, err
		}
		defer func() {
			if serr := m.await(synced); serr != nil && err == nil {
				err = fmt.Errorf("sync Transferring: %w", serr)
			}
		}()
	}
	hs := make([]header, len(tensors))
	c := ctrlOf(data)
	// Outputs from Alloc are lent, not copied, where the receiver offers
	// a hand-off table. Their entries are written first; the copied
	// tensors then report no progress (a quiet control block), so the
	// receiver hashes nothing before done tells it which buffers are
	// lent.
	var lendable []*outSeg
	if d.handoffOffset != 0 {
		lendable = m.outputs.lendable(tensors)
	}
	progress := c
	if lendable != nil {
		progress = &ctrl{}
	}
	words := make([]uint64, len(lendable))
	for i, s := range lendable {
		if s == nil {
			continue
		}
		t := tensors[i]
		words[i] = m.outputs.nextWord()
		hs[i] = header{spec: t.Spec, length: d.buffers[i].length, sum: m.outputs.checksum(s, t.Data)}
		if err := putHandoff(data[d.handoffOffset+handoffEntry*uint64(i):], words[i], 0, s.seg.size, s.seg.name); err != nil {
			faulted = true
			return nil, fmt.Errorf("send: hand-off table: %w", err)
		}
	}
	var copied uint64 // bytes copied or lent, over the buffers in order
	for i, t := range tensors {
		b := d.buffers[i]
		if lendable != nil && lendable[i] != nil {
			copied += b.length
			continue
		}
		// On the fast path the last bytes' wake-up is done's.
		hold := d.fast() && i == len(tensors)-1
		sum, err := m.copyChunks(j, data[b.offset:b.offset+b.length], t.Data, progress, copied, hold)
		copied += b.length
		if errors.Is(err, errFault) {
			faulted = true
		}
		if err != nil {
			return nil, fmt.Errorf("send: tensor %d %q: %w", i, t.Name, err)
		}
		hs[i] = header{spec: t.Spec, length: b.length, sum: sum}
	}
	if d.fast() {
		if err := putSums(data[d.checksumOffset:], hs); err != nil {
			faulted = true
			return nil, fmt.Errorf("send: checksum table: %w", err)
		}
		if beforeLend != nil && lendable != nil {
			beforeLend(m)
		}
		if err := m.lend(lendable, words, d, fd); err != nil {
			return nil, fmt.Errorf("send: %w", err)
		}
		c.finish(copied)
	}
	return hs, nil
}

// lend marks the segments lent to the room's receiver, before done makes
// the hand-off entries visible. Each lend keeps a duplicate of fd, the
// receiver's segment, so that the sender sees it unlinked.
func (m *Manager) lend(segs []*outSeg, words []uint64, d *descriptor, fd int) error {
	pid := 0
	if owner, ok := SegmentOwner(d.segment); ok {
		_, pid, _ = SplitProcessName(owner)
	}
	for i, s := range segs {
		if s == nil {
			continue
		}
		peer, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			peer = -1 // the sender then relies on the receiver's process
		}
		if err := m.outputs.lend(s, words[i], pid, peer); err != nil {
			for _, l := range segs[:i] { // done is not set: nobody saw them
				if l != nil {
					m.outputs.unlend(l)
				}
			}
			return err
		}
	}
	return nil
}

// putSums writes the checksum table of the fast path: one little-endian
// uint64 per buffer, in order.
func putSums(dst []byte, hs []header) (err error) {
	defer recoverFault(&err)
	for i, h := range hs {
		binary.LittleEndian.PutUint64(dst[8*i:], h.sum)
	}
	return nil
}

// recoverFault turns the panic of a memory fault in a receiver's segment
// (SetPanicOnFault) into errFault; any other panic goes on.
func recoverFault(err *error) {
	if p := recover(); p != nil {
		if _, fault := p.(interface{ Addr() uintptr }); !fault {
			panic(p)
		}
		*err = fmt.Errorf("%w: %v", errFault, p)
	}
}

// syncTransferring moves the room to Transferring and tells the receiver.
func (m *Manager) syncTransferring(r *room, d *descriptor) error {
	synced, err := m.postTransferring(r, d)
	if err != nil {
		return err
	}
	if err := m.await(synced); err != nil {
		return fmt.Errorf("sync Transferring: %w", err)
	}
	return nil
}

// postTransferring moves the room to Transferring and hands the frame that
// tells the receiver to the socket owner without waiting: the returned
// channel gets the result of sending it.
func (m *Manager) postTransferring(r *room, d *descriptor) (<-chan error, error) {
	if !m.toTransferring(r) {
		return nil, errAborted
	}
	frame, err := encodeStatus(r.id, d.generation, Transferring, "", nil)
	if err != nil {
		return nil, err
	}
	sent := make(chan error, 1)
	if err := m.post(command{fn: func(o *owner) error { sent <- o.send(r.id, frame); return nil }}); err != nil {
		return nil, fmt.Errorf("sync Transferring: %w", err)
	}
	return sent, nil
}

// toTransferring moves a sender room to Transferring, unless it is being
// removed or has failed.
func (m *Manager) toTransferring(r *room) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !r.removing && m.setStatusLocked(r, Transferring, "")
}

// await waits for the result of a command posted without a reply.
func (m *Manager) await(result <-chan error) error {
	select {
	case err := <-result:
		return err
	case <-m.ownerDone:
		select {
		case err := <-result:
			return err
		default:
			return errOwnerStopped
		}
	}
}

// streamIn is copyIn for a zmq room: it checksums the tensors, syncs
// Transferring, and has the socket owner stream them to the receiver on
// the same connection, so that they arrive between Transferring and
// Success.
func (m *Manager) streamIn(j *job, d *descriptor) ([]header, error) {
	r := j.r
	tensors, err := selectTensors(j.tensors, d.buffers, false)
	if err != nil {
		return nil, err
	}
	hs := make([]header, len(tensors))
	for i, t := range tensors {
		if err := j.ctx.Err(); err != nil {
			return nil, fmt.Errorf("send canceled: %w", err)
		}
		hs[i] = header{spec: t.Spec, length: d.buffers[i].length, sum: tensor.Checksum(t.Data)}
	}
	if err := m.syncTransferring(r, d); err != nil {
		return nil, err
	}
	// The owner queues one window at a time, so that it goes on serving
	// other rooms, and a Remove or a cancel stops the stream between
	// windows.
	var window []dataPart
	var queued int
	flush := func() error {
		if r.abort.Load() {
			return errAborted
		}
		if err := j.ctx.Err(); err != nil {
			return fmt.Errorf("send canceled: %w", err)
		}
		parts := window
		window, queued = nil, 0
		return m.call(func(o *owner) error { return o.streamData(r.id, d.generation, parts) })
	}
	for i, t := range tensors {
		for off := 0; off < len(t.Data); off += zmqChunk {
			end := min(off+zmqChunk, len(t.Data))
			window = append(window, dataPart{offset: d.buffers[i].offset + uint64(off), b: t.Data[off:end]})
			if queued += end - off; queued >= zmqWindow {
				if err := flush(); err != nil {
					return nil, err
				}
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return hs, nil
}

// errFault marks a memory fault in the receiver's segment.
var errFault = errors.New("memory fault writing the receiver's segment (was it truncated?)")

// copyChunks copies src into dst (same length) one checksum block at a
// time: after each block it hashes the block (still in the cache) and
// reports base plus the bytes copied so far in the control block c, so that
// the receiver verifies it while the next one is copied. Between blocks it
// checks whether the room is being removed or failed or the Send was
// canceled. With hold, the progress of the last block is stored without
// a wake-up (the caller's finish wakes). It returns the checksum of src.
func (m *Manager) copyChunks(j *job, dst, src []byte, c *ctrl, base uint64, hold bool) (sum uint64, err error) {
	defer recoverFault(&err)
	var chain tensor.Chain
	for off := 0; off < len(src); off += chunkSize {
		if j.r.abort.Load() {
			return 0, errAborted
		}
		if err := j.ctx.Err(); err != nil {
			return 0, fmt.Errorf("send canceled: %w", err)
		}
		end := min(off+chunkSize, len(src))
		copy(dst[off:end], src[off:end])
		chain.Block(src[off:end])
		switch {
		case hold && end == len(src):
			c.progress.Store(base + uint64(end))
		case end == len(src) || (off/chunkSize+1)%wakeEvery == 0:
			c.publish(base + uint64(end))
		default:
			// A receiver that looks sees it; one that sleeps is woken
			// with the next wakeEvery blocks.
			c.progress.Store(base + uint64(end))
		}
		if afterChunk != nil {
			afterChunk(m, j.r.id)
		}
	}
	if len(src) == 0 && !hold {
		c.publish(base)
	}
	return chain.Sum(), nil
}

package transfer

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/phased/phased/sdk/tensor"
)

// A shm segment begins with a control block of ctrlSize bytes, through
// which the sender tells the receiver how far it has copied, so that the
// receiver verifies checksum blocks while the sender copies the next ones
// (the two sides work on two cores at once) instead of hashing everything
// after Success. Buffers start after it. The receiver zeroes it before it
// sends the descriptor; only the sender's worker writes progress; the
// receiver trusts none of it: progress is clamped to the buffers, and
// Success's checksums decide.
//
//	offset 0   progress  uint64  bytes of the room's buffers copied, counted
//	                             over the buffers in descriptor order, in
//	                             whole checksum blocks (or to a buffer's end)
//	offset 8   seq       uint32  futex word: bumped by every publish, and by
//	                             the receiver's own process to wake its waiter
//	offset 12  waiting   uint32  1 while the receiver sleeps on seq
//	offset 16  done      uint32  fast path: 1 once every buffer and the
//	                             checksum table are written; the sender
//	                             writes nothing after it
//
// The fast path: a receiver that names a checksum table in its descriptor
// learns the end of the copy from done, woken through seq, instead of
// from Transferring and Success frames through both processes' socket
// owners and libzmq's I/O threads; the frames stay for failures, for
// senders that do not write the table, and for the other backends.
const ctrlSize = alignment

// ctrl is the control block, in the shared mapping.
type ctrl struct {
	progress atomic.Uint64
	seq      atomic.Uint32
	waiting  atomic.Uint32
	done     atomic.Uint32
}

// ctrlOf returns the control block at the start of a mapped segment.
func ctrlOf(seg []byte) *ctrl {
	_ = seg[ctrlSize-1]
	return (*ctrl)(unsafe.Pointer(&seg[0]))
}

// reset clears the control block for a new room.
func (c *ctrl) reset() {
	c.progress.Store(0)
	c.seq.Store(0)
	c.waiting.Store(0)
	c.done.Store(0)
}

// publish records n bytes copied and wakes the receiver if it sleeps.
func (c *ctrl) publish(n uint64) {
	c.progress.Store(n)
	c.wake()
}

// finish marks the sender's writes complete (the fast path) and wakes the
// receiver: one wake-up for the last bytes and the end.
func (c *ctrl) finish(n uint64) {
	c.progress.Store(n)
	c.done.Store(1)
	c.wake()
}

// wake bumps seq, so that a waiter about to sleep on the old value does
// not, and wakes a sleeping one. Store before the check of waiting, and
// the waiter's store of waiting before its futex wait compares seq, are
// sequentially consistent, so no wake is lost.
func (c *ctrl) wake() {
	c.seq.Add(1)
	if c.waiting.Load() != 0 {
		futexWake(&c.seq)
	}
}

// sleep waits until seq differs from seen or a wake comes, at most max.
func (c *ctrl) sleep(seen uint32, max time.Duration) {
	c.waiting.Store(1)
	futexWait(&c.seq, seen, max)
	c.waiting.Store(0)
}

// Shared (not FUTEX_PRIVATE) operations: the word is in memory that two
// processes map.
const (
	futexWaitOp = 0 // FUTEX_WAIT
	futexWakeOp = 1 // FUTEX_WAKE
)

func futexWait(addr *atomic.Uint32, val uint32, max time.Duration) {
	ts := unix.NsecToTimespec(max.Nanoseconds())
	// EAGAIN (the word changed), EINTR and ETIMEDOUT all mean: look again.
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitOp, uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
}

func futexWake(addr *atomic.Uint32) {
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeOp, uintptr(^uint32(0)>>1), 0, 0, 0)
}

// verifier hashes a receiver room's buffers block by block as the sender
// reports progress, and at Success the rest. Only the goroutine that set
// room.verifying uses it.
type verifier struct {
	tensor int          // the buffer being hashed
	off    uint64       // bytes of it hashed
	pos    uint64       // bytes hashed over all buffers
	chain  tensor.Chain // its checksum so far
	sums   []uint64     // checksums of the buffers finished
	// skip marks the buffers a hand-off stands for (set once the sender
	// is done): their bytes in the segment are not the tensor's.
	skip []bool
}

// advance hashes every whole block (or buffer end) below limit, a byte
// count over all buffers in order, and reports whether it hashed any.
func (v *verifier) advance(bufs []buffer, data []byte, limit uint64) bool {
	moved := false
	var start uint64 // where buffer v.tensor starts in the count
	for i := range v.tensor {
		start += bufs[i].length
	}
	for v.tensor < len(bufs) {
		b := bufs[v.tensor]
		if v.tensor < len(v.skip) && v.skip[v.tensor] && v.off == 0 {
			v.pos += b.length
			v.sums = append(v.sums, 0)
			v.tensor++
			start += b.length
			moved = true
			continue
		}
		avail := min(limit-min(limit, start), b.length)
		for v.off < b.length {
			end := min(v.off+tensor.ChecksumBlock, b.length)
			if end > avail {
				return moved
			}
			v.chain.Block(data[b.offset+v.off : b.offset+end])
			v.pos += end - v.off
			v.off = end
			moved = true
		}
		v.sums = append(v.sums, v.chain.Sum())
		v.tensor, v.off, v.chain = v.tensor+1, 0, tensor.Chain{}
		start += b.length
		moved = true
	}
	return moved
}

// total is the bytes of all buffers.
func totalBytes(bufs []buffer) uint64 {
	var n uint64
	for _, b := range bufs {
		n += b.length
	}
	return n
}

//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"gorgonia.org/cu"
)

// Copier copies into device memory on one non-blocking stream: copies run
// on the device in the order they were issued, and many can be in flight.
// Each copy returns a Transfer to wait on. Its methods are safe for
// concurrent use.
type Copier struct {
	dev    *Device
	stream cu.Stream

	mu      sync.Mutex
	closed  bool
	pending map[*Transfer]struct{} // issued, not yet waited
}

// Transfer is one copy issued on a Copier, marked by an event recorded on
// the stream right after it. Wait on every Transfer (or close the Copier)
// so that its event is released.
type Transfer struct {
	c   *Copier
	src []byte // a host source, kept reachable until the copy is done

	mu    sync.Mutex
	event cu.Event
	done  bool
	err   error
}

// Copy issues a device-to-device copy of n bytes from src, device memory of
// this process's context (a Buffer's Ptr, or a framework tensor's data
// pointer), to dst at off (cuMemcpyDtoDAsync). The destination range is
// checked against dst's size; src is the caller's and is not checked.
func (c *Copier) Copy(dst Memory, off int64, src DevicePtr, n int64) (*Transfer, error) {
	if src == 0 && n > 0 {
		return nil, fmt.Errorf("cuda: copy: the source pointer is nil")
	}
	return c.issue("copy", dst, off, n, nil, func(to cu.DevicePtr) error {
		if err := cu.MemcpyDtoDAsync(to, cu.DevicePtr(src), n, c.stream); err != nil {
			return fmt.Errorf("cuMemcpyDtoDAsync: %w", err)
		}
		return nil
	})
}

// CopyFromHost issues a copy of src to dst at off (cuMemcpyHtoDAsync). Go
// memory is pageable, so the driver stages src before CopyFromHost returns
// and the copy itself runs in order on the stream; still, leave src
// unchanged until the Transfer is done.
func (c *Copier) CopyFromHost(dst Memory, off int64, src []byte) (*Transfer, error) {
	n := int64(len(src))
	return c.issue("copy from host", dst, off, n, src, func(to cu.DevicePtr) error {
		if err := cu.MemcpyHtoDAsync(to, unsafe.Pointer(&src[0]), n, c.stream); err != nil {
			return fmt.Errorf("cuMemcpyHtoDAsync: %w", err)
		}
		return nil
	})
}

// issue checks the destination, runs enqueue for the destination address
// and records the Transfer's event after it. A zero-length copy records
// only the event.
func (c *Copier) issue(what string, dst Memory, off, n int64, src []byte, enqueue func(cu.DevicePtr) error) (*Transfer, error) {
	if dst == nil {
		return nil, fmt.Errorf("cuda: %s: no destination", what)
	}
	r, release, err := dst.acquire()
	if err != nil {
		return nil, fmt.Errorf("cuda: %s: %w", what, err)
	}
	defer release()
	if r.dev != c.dev {
		return nil, fmt.Errorf("cuda: %s: the destination belongs to %s, the copier to %s", what, r.dev, c.dev)
	}
	if err := checkRange(what, r.size, off, n); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("cuda: %s: copier: %w", what, ErrClosed)
	}
	t := &Transfer{c: c, src: src}
	err = c.dev.do(func() error {
		ev, err := cu.MakeEvent(cu.DisableTiming)
		if err != nil {
			return fmt.Errorf("cuEventCreate: %w", err)
		}
		if n > 0 {
			if err := enqueue(r.ptr + cu.DevicePtr(off)); err != nil {
				return errors.Join(err, cu.DestroyEvent(&ev))
			}
		}
		if err := ev.Record(c.stream); err != nil {
			// The copy may be in flight with nothing to wait on: wait
			// for the whole stream before reporting.
			return errors.Join(fmt.Errorf("cuEventRecord: %w", err), c.stream.Synchronize(), cu.DestroyEvent(&ev))
		}
		t.event = ev
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cuda: %s of %d bytes to offset %d: %w", what, n, off, err)
	}
	c.pending[t] = struct{}{}
	return t, nil
}

// Sync waits until every copy issued so far is complete.
func (c *Copier) Sync() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("cuda: sync: copier: %w", ErrClosed)
	}
	if err := c.dev.do(c.stream.Synchronize); err != nil {
		return fmt.Errorf("cuda: sync copier stream: %w", err)
	}
	return nil
}

// Close waits for every copy issued, completes the Transfers nobody waited
// on, and destroys the stream. It is idempotent.
func (c *Copier) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	pending := make([]*Transfer, 0, len(c.pending))
	for t := range c.pending {
		pending = append(pending, t)
	}
	clear(c.pending)
	c.mu.Unlock()

	var errs []error
	syncErr := c.dev.do(c.stream.Synchronize)
	if syncErr != nil {
		errs = append(errs, fmt.Errorf("cuda: close copier: sync stream: %w", syncErr))
	}
	for _, t := range pending {
		t.mu.Lock()
		if !t.done {
			errs = append(errs, t.finishLocked(syncErr))
		}
		t.mu.Unlock()
	}
	if err := c.dev.do(c.stream.Destroy); err != nil {
		errs = append(errs, fmt.Errorf("cuda: close copier: destroy stream: %w", err))
	}
	c.dev.mu.Lock()
	delete(c.dev.copiers, c)
	c.dev.mu.Unlock()
	return errors.Join(errs...)
}

// Wait blocks until the copy is complete (cuEventSynchronize) and returns
// its outcome; later calls return the same.
func (t *Transfer) Wait() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return t.err
	}
	err := t.c.dev.do(t.event.Synchronize)
	if err != nil {
		err = fmt.Errorf("cuda: wait for copy: %w", err)
	}
	t.finishLocked(err)
	t.forget()
	return t.err
}

// Done reports, without blocking, whether the copy is complete
// (cuEventQuery), and its outcome once it is.
func (t *Transfer) Done() (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return true, t.err
	}
	ready := false
	err := t.c.dev.do(func() error {
		err := t.event.Query()
		if errors.Is(err, cu.NotReady) {
			return nil
		}
		ready = err == nil
		return err
	})
	if err == nil && !ready {
		return false, nil
	}
	if err != nil {
		err = fmt.Errorf("cuda: query copy: %w", err)
	}
	t.finishLocked(err)
	t.forget()
	return true, t.err
}

// finishLocked records the outcome, destroys the event and drops the host
// source; t.mu is held. A failure to destroy the event joins the outcome
// and is also returned, for Copier.Close.
func (t *Transfer) finishLocked(err error) error {
	t.done = true
	t.src = nil
	derr := t.c.dev.do(func() error { return cu.DestroyEvent(&t.event) })
	if derr != nil {
		derr = fmt.Errorf("cuda: destroy copy event: %w", derr)
	}
	t.err = errors.Join(err, derr)
	return derr
}

// forget drops t from its copier's pending set.
func (t *Transfer) forget() {
	t.c.mu.Lock()
	delete(t.c.pending, t)
	t.c.mu.Unlock()
}

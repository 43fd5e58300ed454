// Package cuda is the device-memory half of the cuda transfer backend: the
// receiver allocates device memory and exports a CUDA IPC handle for it, the
// sender opens that handle once and copies into it, device to device, on a
// stream.
//
// The real implementation is built only with -tags cuda. gorgonia.org/cu
// calls cuInit in its package init and exits the process when there is no
// GPU, so no file of this package built without the tag imports it; without
// the tag Init returns ErrNoCUDA and callers still compile. The headers and
// the library to link against come from Debian's nvidia-cuda-dev and libcuda1
// (scripts/cuda-deps.sh fetches them into .cache/cuda).
//
// # Lifecycle
//
//	dev, err := cuda.Init(0)           // retains device 0's primary context
//	defer dev.Close()                  // frees and closes everything below
//
//	// receiver: device memory with an IPC handle for the descriptor
//	buf, err := dev.Alloc(size)
//	h := buf.Handle()                  // 64 bytes, sent to the sender
//	n, err := buf.ReadAt(host, off)    // or use buf.Ptr() on the device
//	err = buf.Free()                   // once the sender is done with it
//
//	// sender: open the receiver's buffer once, copy into it many times
//	peer, err := dev.Open(h, size)     // the same *PeerBuffer for the same h
//	cp, err := dev.NewCopier()         // one stream
//	t, err := cp.Copy(peer, off, src, n)        // src: device memory here
//	t, err = cp.CopyFromHost(peer, off, bytes)  // or host bytes
//	err = t.Wait()                     // this copy is complete
//	err = cp.Close()
//	err = peer.Close()                 // once, when the receiver is gone
//
// Every Close and Free is idempotent and safe after a partial start;
// Device.Close closes whatever its children left open.
//
// # Threads and contexts
//
// All work runs in the device's primary context, the one CUDA runtime users
// (PyTorch, CuPy) share, so device pointers from those libraries are valid
// sources for Copy. The context is made current on the calling goroutine's
// locked OS thread for the length of each call; the package starts no
// goroutines.
//
// # Trust
//
// Offsets and lengths are checked against the buffer's size before anything
// reaches the driver (ErrOutOfRange), and Open checks the claimed size
// against the size of the allocation the handle maps, so a descriptor from
// the network cannot make the sender write outside the receiver's buffer.
// A raw source pointer passed to Copy is the caller's own memory and is not
// checked.
package cuda

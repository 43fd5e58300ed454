package cuda_test

import (
	"errors"
	"fmt"

	"github.com/phased/phased/sdk/transfer/cuda"
)

// The sender side of one transfer: open the receiver's buffer by the handle
// in its descriptor (once; later opens return the same mapping), copy a
// tensor already on the GPU into it, and wait. Built without -tags cuda,
// Init returns ErrNoCUDA.
func Example() {
	dev, err := cuda.Init(0)
	if errors.Is(err, cuda.ErrNoCUDA) {
		fmt.Println("no cuda backend in this build")
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dev.Close()

	var (
		handle cuda.Handle    // from the receiver's descriptor
		size   int64          // the receiver's buffer size, from the descriptor
		offset int64          // where this tensor goes in it
		src    cuda.DevicePtr // the tensor's data on this GPU
		n      int64          // its length in bytes
	)
	peer, err := dev.Open(handle, size)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer peer.Close()
	cp, err := dev.NewCopier()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cp.Close()
	t, err := cp.Copy(peer, offset, src, n)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := t.Wait(); err != nil {
		fmt.Println(err)
	}
}

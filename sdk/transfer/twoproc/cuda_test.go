//go:build cuda

package twoproc

// The cuda backend between two processes, on a GPU machine only: built
// with -tags cuda (make device-pack) and run there by
// scripts/device-check.sh. CUDA IPC handles cannot be opened by the process
// that exported them, so these tests need the second process.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
	"github.com/phased/phased/sdk/transfer/cuda"
)

// deviceTensor returns a tensor of n bytes in device memory holding data,
// allocated on dev and freed when the test ends.
func deviceTensor(tb testing.TB, dev *cuda.Device, data []byte) tensor.Tensor {
	tb.Helper()
	buf, err := dev.Alloc(int64(len(data)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := buf.Free(); err != nil {
			tb.Error(err)
		}
	})
	if _, err := buf.WriteAt(data, 0); err != nil {
		tb.Fatal(err)
	}
	return tensor.Tensor{Spec: spec(int64(len(data))), DevicePtr: uintptr(buf.Ptr())}
}

func openDevice(tb testing.TB) *cuda.Device {
	tb.Helper()
	dev, err := cuda.Init(0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := dev.Close(); err != nil {
			tb.Error(err)
		}
	})
	return dev
}

// TestCUDAHop2P sends a host tensor and a device tensor over cuda rooms
// to another process, which reads its device buffer back and answers with
// the checksum.
func TestCUDAHop2P(t *testing.T) {
	dir := runDir(t)
	m := startManagerWith(t, transfer.Config{Dir: dir, Name: fmt.Sprintf("cudatx.%d", os.Getpid()), CUDA: true})
	dev := openDevice(t)
	c := startChild(t, dir, cudaEnv+"=1")
	const size = 8<<20 + 12345
	host, err := tensor.New(spec(size))
	if err != nil {
		t.Fatal(err)
	}
	for i := range host.Data {
		host.Data[i] = byte(i*13 + i>>11)
	}
	want := strconv.FormatUint(tensor.Checksum(host.Data), 10)
	for room, x := range map[uint64]tensor.Tensor{1: host, 2: deviceTensor(t, dev, host.Data)} {
		ep, err := m.OpenSenderWith(room, sdk.BackendCUDA)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c.in, "open %d %s %d\n", room, ep, size)
		c.expect(t, "open")
		if err := m.Send(context.Background(), room, []tensor.Tensor{x}); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c.in, "recv %d\n", room)
		if got := strings.TrimPrefix(c.expect(t, "ok "), "ok "); got != want {
			t.Fatalf("room %d (device source %t): the receiver has checksum %s, want %s", room, x.OnDevice(), got, want)
		}
		fmt.Fprintf(c.in, "remove %d\n", room)
		c.expect(t, "removed")
		if err := m.Remove(room); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkCUDAHop2P measures one cuda hop between two processes, from a
// device tensor into the receiver's device buffer (Send to the receiver's
// answer, room open and remove outside the timer), beside an in-process
// device-to-device copy of the same size in the same run.
func BenchmarkCUDAHop2P(b *testing.B) {
	dev := openDevice(b)
	for _, size := range []int64{8 << 20, 64 << 20} {
		name := fmt.Sprintf("%dMiB", size>>20)
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7)
		}
		src := deviceTensor(b, dev, data)
		dst, err := dev.Alloc(size)
		if err != nil {
			b.Fatal(err)
		}
		cp, err := dev.NewCopier()
		if err != nil {
			b.Fatal(err)
		}
		d2d := func() {
			tr, err := cp.Copy(dst, 0, cuda.DevicePtr(src.DevicePtr), size)
			if err == nil {
				err = tr.Wait()
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		b.Run("d2d-"+name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				d2d()
			}
		})
		b.Run("cuda-"+name, func(b *testing.B) {
			dir := runDir(b)
			m := startManagerWith(b, transfer.Config{Dir: dir, Name: fmt.Sprintf("cudabench.%d", os.Getpid()), CUDA: true})
			benchHops(b, m, startChild(b, dir, cudaEnv+"=1"), sdk.BackendCUDA, src, baseline{"d2d", d2d})
		})
		if err := errors.Join(cp.Close(), dst.Free()); err != nil {
			b.Fatal(err)
		}
	}
}

//go:build cuda

package cuda

// These tests need a GPU. gorgonia.org/cu exits the process in its init
// when the driver finds none, so a test binary built with -tags cuda runs
// only on a GPU machine (scripts/device-check.sh); newDevice still skips
// when the driver reports no device.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"gorgonia.org/cu"
)

// The test binary re-executes itself as a helper process: helperEnv names
// the role, the others carry its arguments.
const (
	helperEnv   = "PHASED_CUDA_HELPER"
	handleEnv   = "PHASED_CUDA_HANDLE"
	sizeEnv     = "PHASED_CUDA_SIZE"
	helperOK    = "phased-cuda-helper: ok"
	handleLabel = "handle="
)

func newDevice(tb testing.TB) *Device {
	tb.Helper()
	if n, err := cu.NumDevices(); err != nil || n == 0 {
		tb.Skipf("no CUDA device (count %d, %v)", n, err)
	}
	d, err := Init(0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := d.Close(); err != nil {
			tb.Errorf("close device: %v", err)
		}
	})
	return d
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*131+i>>9) ^ seed
	}
	return b
}

// sameBytes fails tb at the first byte where got and want differ.
func sameBytes(tb testing.TB, what string, got, want []byte) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			tb.Fatalf("%s: byte %d is %#x, want %#x", what, i, got[i], want[i])
		}
	}
}

func helper(role string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(append(os.Environ(), helperEnv+"="+role), env...)
	return cmd
}

// TestHelperProcess is the other process of the two-process tests and
// benchmarks; it does nothing unless re-executed with helperEnv set.
func TestHelperProcess(t *testing.T) {
	role := os.Getenv(helperEnv)
	if role == "" {
		t.Skip("the helper process of the two-process tests; runs only when re-executed by them")
	}
	size, err := strconv.ParseInt(os.Getenv(sizeEnv), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", sizeEnv, err)
	}
	switch role {
	case "sender":
		helperSender(t, size)
	case "receiver":
		helperReceiver(t, size)
	default:
		t.Fatalf("unknown helper role %q", role)
	}
	fmt.Println(helperOK)
}

// helperSender opens the parent's buffer by its handle and fills it with
// pattern(size, 1): the first half from host memory, the second half device
// to device from a buffer of its own. On the way it checks the claims and
// bounds a sender must refuse.
func helperSender(t *testing.T, size int64) {
	h, err := ParseHandle(os.Getenv(handleEnv))
	if err != nil {
		t.Fatal(err)
	}
	d := newDevice(t)

	if _, err := d.Open(h, size+64<<20); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Open with a claim 64 MiB larger than the allocation: %v, want ErrOutOfRange", err)
	}
	p, err := d.Open(h, size)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := d.Open(h, size); err != nil || again != p {
		t.Fatalf("second Open of the same handle = %p, %v; want the cached %p", again, err, p)
	}
	if _, err := d.Open(h, size-1); err == nil || !strings.Contains(err.Error(), "already open") {
		t.Fatalf("Open of an open handle with another size: %v, want an 'already open' error", err)
	}
	if p.Size() != size || p.Handle() != h {
		t.Fatalf("peer buffer size %d handle %s, want %d %s", p.Size(), p.Handle().short(), size, h.short())
	}

	want := pattern(int(size), 1)
	half := size / 2
	c, err := d.NewCopier()
	if err != nil {
		t.Fatal(err)
	}
	src, err := d.Alloc(size - half)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.WriteAt(want[half:], 0); err != nil {
		t.Fatal(err)
	}
	t1, err := c.CopyFromHost(p, 0, want[:half])
	if err != nil {
		t.Fatal(err)
	}
	t2, err := c.Copy(p, half, src.Ptr(), size-half)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ off, n int64 }{{size - 1, 2}, {-1, 1}, {size + 1, 0}, {0, size + 1}, {1, math.MaxInt64}} {
		if _, err := c.Copy(p, r.off, src.Ptr(), r.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Copy to [%d, +%d) of a %d-byte peer buffer: %v, want ErrOutOfRange", r.off, r.n, size, err)
		}
	}
	if _, err := c.CopyFromHost(p, size-3, make([]byte, 4)); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("CopyFromHost past the end: %v, want ErrOutOfRange", err)
	}
	// Wait out of order: each Transfer has its own event.
	if err := t2.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := t1.Wait(); err != nil {
		t.Fatal(err)
	}
	if done, err := t1.Done(); !done || err != nil {
		t.Fatalf("Done after Wait = %v, %v", done, err)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.Copy(p, 0, src.Ptr(), 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Copy into a closed peer buffer: %v, want ErrClosed", err)
	}
	again, err := d.Open(h, size)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	if again == p {
		t.Fatal("Open after Close returned the closed peer buffer")
	}
	// Left open on purpose: Device.Close (the cleanup) closes it.
}

// helperReceiver allocates size bytes, prints the handle, and keeps the
// buffer until its stdin closes.
func helperReceiver(t *testing.T, size int64) {
	d := newDevice(t)
	b, err := d.Alloc(size)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("%s%s\n", handleLabel, b.Handle())
	if _, err := io.Copy(io.Discard, os.Stdin); err != nil {
		t.Fatal(err)
	}
}

// startReceiver runs a receiver helper holding a size-byte buffer and
// returns its handle; the helper ends when the test does.
func startReceiver(tb testing.TB, size int64) Handle {
	tb.Helper()
	cmd := helper("receiver", fmt.Sprintf("%s=%d", sizeEnv, size))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	var rest bytes.Buffer
	stop := func() error {
		stdin.Close()
		_, _ = io.Copy(&rest, stdout)
		return cmd.Wait()
	}
	sc := bufio.NewScanner(stdout)
	var h Handle
	found := false
	for !found && sc.Scan() {
		line := sc.Text()
		rest.WriteString(line + "\n")
		if s, ok := strings.CutPrefix(line, handleLabel); ok {
			if h, err = ParseHandle(s); err != nil {
				tb.Fatal(err)
			}
			found = true
		}
	}
	if !found {
		err := stop()
		tb.Fatalf("receiver process printed no handle (%v)\n%s%s", err, rest.String(), stderr.String())
	}
	tb.Cleanup(func() {
		if err := stop(); err != nil || !strings.Contains(rest.String(), helperOK) {
			tb.Errorf("receiver process: %v\n%s%s", err, rest.String(), stderr.String())
		}
	})
	return h
}

// TestTwoProcesses: this process allocates and exports, a child process
// opens the handle and copies in (from host and device to device), and the
// bytes are checked here, copied back to the host.
func TestTwoProcesses(t *testing.T) {
	d := newDevice(t)
	const size = 3<<20 + 17
	b, err := d.Alloc(size)
	if err != nil {
		t.Fatal(err)
	}
	if b.Size() != size || b.Ptr() == 0 {
		t.Fatalf("buffer size %d ptr %#x", b.Size(), b.Ptr())
	}
	if _, err := b.WriteAt(make([]byte, size), 0); err != nil {
		t.Fatal(err)
	}
	cmd := helper("sender", handleEnv+"="+b.Handle().String(), fmt.Sprintf("%s=%d", sizeEnv, size))
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte(helperOK)) {
		t.Fatalf("sender process: %v\n%s", err, out)
	}
	got := make([]byte, size)
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "receiver buffer after the sender's copies", got, pattern(size, 1))
}

// TestSenderSide opens a child's buffer from this process: the direction
// the benchmark uses.
func TestSenderSide(t *testing.T) {
	d := newDevice(t)
	const size = 1 << 20
	h := startReceiver(t, size)
	p, err := d.Open(h, size)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.NewCopier()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := c.CopyFromHost(p, 0, pattern(size, 3))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenOwnHandle(t *testing.T) {
	d := newDevice(t)
	b, err := d.Alloc(4096)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Open(b.Handle(), 4096); !errors.Is(err, ErrOwnHandle) {
		t.Fatalf("Open of this process's own handle: %v, want ErrOwnHandle", err)
	}
}

func TestArguments(t *testing.T) {
	d := newDevice(t)
	b, err := d.Alloc(64)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.NewCopier()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		call    func() error
		wantErr string
	}{
		{"alloc zero", func() error { _, err := d.Alloc(0); return err }, "size must be positive"},
		{"alloc negative", func() error { _, err := d.Alloc(-1); return err }, "size must be positive"},
		{"open zero size", func() error { _, err := d.Open(Handle{1}, 0); return err }, "must be positive"},
		{"copy nil source", func() error { _, err := c.Copy(b, 0, 0, 1); return err }, "source pointer is nil"},
		{"copy nil destination", func() error { _, err := c.Copy(nil, 0, b.Ptr(), 1); return err }, "no destination"},
		{"open garbage handle", func() error { _, err := d.Open(Handle{1, 2, 3}, 64); return err }, "cuIpcOpenMemHandle"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil || !strings.HasPrefix(err.Error(), "cuda: ") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error starting \"cuda: \" containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestBounds checks every copy and host access against the buffer's size:
// the valid ones land where they should and the others write nothing.
func TestBounds(t *testing.T) {
	d := newDevice(t)
	const size = 4096
	dst, err := d.Alloc(size)
	if err != nil {
		t.Fatal(err)
	}
	src, err := d.Alloc(size)
	if err != nil {
		t.Fatal(err)
	}
	want := pattern(size, 9)
	if _, err := src.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.WriteAt(make([]byte, size), 0); err != nil {
		t.Fatal(err)
	}
	c, err := d.NewCopier()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		off, n  int64
		wantErr error
	}{
		{"first half", 0, size / 2, nil},
		{"empty at the end", size, 0, nil},
		{"last byte", size - 1, 1, nil},
		{"second half", size / 2, size / 2, nil},
		{"one byte past the end", size - 1, 2, ErrOutOfRange},
		{"negative offset", -1, 1, ErrOutOfRange},
		{"negative length", 0, -1, ErrOutOfRange},
		{"offset past the end", size + 1, 0, ErrOutOfRange},
		{"longer than the buffer", 0, size + 1, ErrOutOfRange},
		{"overflowing", 1, math.MaxInt64, ErrOutOfRange},
	}
	for _, tc := range cases {
		t.Run("copy/"+tc.name, func(t *testing.T) {
			tr, err := c.Copy(dst, tc.off, src.Ptr()+DevicePtr(max(tc.off, 0)), tc.n)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Copy(off %d, n %d): %v, want %v", tc.off, tc.n, err, tc.wantErr)
			}
			if err == nil {
				if err := tr.Wait(); err != nil {
					t.Fatal(err)
				}
			}
		})
		t.Run("host/"+tc.name, func(t *testing.T) {
			if tc.n < 0 || tc.n > size+1 {
				t.Skip("no host slice of that length")
			}
			host := make([]byte, tc.n)
			if tc.wantErr == nil {
				host = want[tc.off : tc.off+tc.n]
			}
			tr, err := c.CopyFromHost(dst, tc.off, host)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("CopyFromHost(off %d, n %d): %v, want %v", tc.off, tc.n, err, tc.wantErr)
			}
			if err == nil {
				if err := tr.Wait(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	got := make([]byte, size)
	if _, err := dst.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "destination after the copies", got, want)

	for _, r := range []struct{ off, n int64 }{{size - 1, 2}, {-1, 1}, {size + 1, 0}} {
		buf := make([]byte, r.n)
		if n, err := dst.ReadAt(buf, r.off); n != 0 || !errors.Is(err, ErrOutOfRange) {
			t.Errorf("ReadAt(off %d, n %d) = %d, %v; want 0, ErrOutOfRange", r.off, r.n, n, err)
		}
		if n, err := dst.WriteAt(buf, r.off); n != 0 || !errors.Is(err, ErrOutOfRange) {
			t.Errorf("WriteAt(off %d, n %d) = %d, %v; want 0, ErrOutOfRange", r.off, r.n, n, err)
		}
	}
}

// TestManyInFlight issues many copies before waiting for any, from several
// goroutines at once, and checks every byte.
func TestManyInFlight(t *testing.T) {
	d := newDevice(t)
	const chunk, chunks, workers = 64 << 10, 64, 8
	dst, err := d.Alloc(chunk * chunks)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.NewCopier()
	if err != nil {
		t.Fatal(err)
	}
	want := pattern(chunk*chunks, 5)
	transfers := make([]*Transfer, chunks)
	var wg sync.WaitGroup
	errs := make(chan error, chunks)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < chunks; i += workers {
				tr, err := c.CopyFromHost(dst, int64(i*chunk), want[i*chunk:][:chunk])
				if err != nil {
					errs <- err
					return
				}
				transfers[i] = tr
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := len(transfers) - 1; i >= 0; i-- {
		if err := transfers[i].Wait(); err != nil {
			t.Fatalf("transfer %d: %v", i, err)
		}
	}
	got := make([]byte, len(want))
	if _, err := dst.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "destination after 64 copies in flight", got, want)

	// A Transfer nobody waited on is completed by Close.
	tr, err := c.CopyFromHost(dst, 0, want[:chunk])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if done, err := tr.Done(); !done || err != nil {
		t.Fatalf("Done after Close = %v, %v; want true, nil", done, err)
	}
}

// TestClose checks that teardown is idempotent and that everything made
// from a closed device or copier, or a freed buffer, reports ErrClosed.
func TestClose(t *testing.T) {
	d := newDevice(t)
	b, err := d.Alloc(4096)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := d.Alloc(4096)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.NewCopier()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Free(); err != nil {
		t.Fatal(err)
	}
	if err := b.Free(); err != nil {
		t.Fatalf("second Free: %v", err)
	}
	if _, err := b.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadAt after Free: %v, want ErrClosed", err)
	}
	if _, err := c.CopyFromHost(b, 0, []byte{1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("copy into a freed buffer: %v, want ErrClosed", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, err := range map[string]error{
		"Alloc":     func() error { _, err := d.Alloc(1); return err }(),
		"Open":      func() error { _, err := d.Open(Handle{1}, 1); return err }(),
		"NewCopier": func() error { _, err := d.NewCopier(); return err }(),
		"ReadAt":    func() error { _, err := kept.ReadAt(make([]byte, 1), 0); return err }(),
		"Copy":      func() error { _, err := c.CopyFromHost(kept, 0, []byte{1}); return err }(),
		"Sync":      c.Sync(),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Device.Close: %v, want ErrClosed", name, err)
		}
	}
}

// BenchmarkD2D compares a device-to-device copy into another process's
// buffer opened by its IPC handle (ipc) and into a local buffer on the
// same Copier (stream) with a plain in-process cuMemcpyDtoD (copy, the
// baseline), each waited for before the next; `make bench` and
// scripts/device-check.sh print the ratios.
func BenchmarkD2D(b *testing.B) {
	d := newDevice(b)
	c, err := d.NewCopier()
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int64{8 << 20, 64 << 20} {
		label := fmt.Sprintf("%dMiB", size>>20)
		src, err := d.Alloc(size)
		if err != nil {
			b.Fatal(err)
		}
		dst, err := d.Alloc(size)
		if err != nil {
			b.Fatal(err)
		}
		peer, err := d.Open(startReceiver(b, size), size)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("copy-"+label, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				err := d.do(func() error {
					return errors.Join(cu.MemcpyDtoD(dst.ptr, src.ptr, size), cu.Synchronize())
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, to := range []struct {
			name string
			dst  Memory
		}{{"stream", dst}, {"ipc", peer}} {
			b.Run(to.name+"-"+label, func(b *testing.B) {
				b.SetBytes(size)
				for b.Loop() {
					tr, err := c.Copy(to.dst, 0, src.Ptr(), size)
					if err != nil {
						b.Fatal(err)
					}
					if err := tr.Wait(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		for _, err := range []error{peer.Close(), src.Free(), dst.Free()} {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}

package twoproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// childEnv makes the test binary act as the receiving process; with
// cudaEnv set too, its rooms use the cuda backend (GPU 0).
const (
	childEnv = "PHASED_HOPBENCH_RECEIVER"
	cudaEnv  = "PHASED_HOPBENCH_CUDA"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(senderEnv); dir != "" {
		if err := sender(dir, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "sender:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if dir := os.Getenv(childEnv); dir != "" {
		if err := receiver(dir, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "receiver:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// receiver serves the parent, one command a line, one answer a line:
//
//	open ROOM ENDPOINT BYTES  open the receiving side        → open
//	recv ROOM                 wait for the data, verify it   → ok CHECKSUM
//	remove ROOM               remove the room                → removed
//	hop ROOM ENDPOINT BYTES   open, receive, remove at once  → open, then
//	                          ok BYTES MONO (MONO: CLOCK_MONOTONIC in ns
//	                          when Receive returned)
//	set ROOM ENDPOINT         open a room for the Wan2.1 t2v hop set
//	                          (wanSet), receive it, remove it  → ok
//	count                     open fds and goroutines        → FDS GOROUTINES
//	stream ROOM ENDPOINT BYTES  open; then, while the next commands run,
//	                          receive and remove                → done ROOM
//
// Any error ends the process with a message on stderr.
func receiver(dir string, in io.Reader, out io.Writer) error {
	backend := sdk.BackendShm
	if os.Getenv(cudaEnv) != "" {
		backend = sdk.BackendCUDA
	}
	m, err := transfer.New(transfer.Config{Dir: dir, Name: fmt.Sprintf("hoprx.%d", os.Getpid()), CUDA: backend == sdk.BackendCUDA})
	if err != nil {
		return err
	}
	if err := m.Start(); err != nil {
		return err
	}
	defer m.Release(context.Background())
	ctx := context.Background()
	out = &lockedWriter{w: out} // stream rooms answer from their goroutines
	var streams sync.WaitGroup
	defer streams.Wait()
	// recv answers with the checksum of what arrived, a hop (timed) with
	// its length: Receive has verified the checksum already.
	recv := func(room uint64, hop bool) error {
		ts, done, err := m.Receive(ctx, room)
		if err != nil {
			return err
		}
		at := monotonic()
		n, _ := ts[0].NumBytes()
		if hop {
			fmt.Fprintln(out, "ok", n, at)
		} else {
			// A cuda room's tensor is on the device: bring it back.
			b := make([]byte, n)
			if err := m.CopyToHost(b, ts[0]); err != nil {
				return err
			}
			fmt.Fprintln(out, "ok", tensor.Checksum(b))
		}
		done()
		return nil
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			return fmt.Errorf("empty command")
		}
		var room uint64
		if len(f) > 1 {
			room, _ = strconv.ParseUint(f[1], 10, 64)
		}
		switch {
		case (f[0] == "open" || f[0] == "hop") && len(f) == 4:
			n, _ := strconv.ParseInt(f[3], 10, 64)
			if err := m.OpenReceiverWith(room, backend, f[2], []tensor.Spec{spec(n)}); err != nil {
				return err
			}
			fmt.Fprintln(out, "open")
			if f[0] == "hop" {
				if err := recv(room, true); err != nil {
					return err
				}
				if err := m.Remove(room); err != nil {
					return err
				}
			}
		case f[0] == "set" && len(f) == 3:
			// The Wan2.1 t2v hop set, end to end on this side: open,
			// receive (verified), remove.
			if err := m.OpenReceiverWith(room, backend, f[2], wanSet); err != nil {
				return err
			}
			if _, done, err := m.Receive(ctx, room); err != nil {
				return err
			} else {
				done()
			}
			if err := m.Remove(room); err != nil {
				return err
			}
			fmt.Fprintln(out, "ok")
		case f[0] == "recv" && len(f) == 2:
			if err := recv(room, false); err != nil {
				return err
			}
		case f[0] == "remove" && len(f) == 2:
			if err := m.Remove(room); err != nil {
				return err
			}
			fmt.Fprintln(out, "removed")
		case f[0] == "stream" && len(f) == 4:
			n, _ := strconv.ParseInt(f[3], 10, 64)
			if err := m.OpenReceiverWith(room, backend, f[2], []tensor.Spec{spec(n)}); err != nil {
				return err
			}
			streams.Add(1)
			go func() {
				defer streams.Done()
				_, done, err := m.Receive(ctx, room)
				if errors.Is(err, transfer.ErrRemoved) {
					return // by a remove command
				}
				if err == nil {
					done()
					err = m.Remove(room)
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "receiver: stream:", err)
					os.Exit(1)
				}
				fmt.Fprintln(out, "done", room)
			}()
		case f[0] == "count":
			fds, _ := os.ReadDir("/proc/self/fd")
			fmt.Fprintln(out, len(fds), runtime.NumGoroutine())
		default:
			return fmt.Errorf("bad command %q", sc.Text())
		}
	}
	return sc.Err()
}

// lockedWriter serializes the receiver's answers.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func spec(n int64) tensor.Spec {
	return tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{n}}
}

// child is the receiving process.
type child struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startChild(b testing.TB, dir string, env ...string) *child {
	b.Helper()
	return spawn(b, append([]string{childEnv + "=" + dir}, env...), func(cmd *exec.Cmd) {
		if err := cmd.Wait(); err != nil {
			b.Errorf("receiver process: %v", err)
		}
	})
}

// spawn starts the test binary with env added, as a child driven over
// its stdin and stdout; at the test's end it closes stdin and calls
// reap, which waits for the process.
func spawn(b testing.TB, env []string, reap func(*exec.Cmd)) *child {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close()
		reap(cmd)
	})
	return &child{cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
}

// expect reads one answer and fails unless it starts with want.
func (c *child) expect(b testing.TB, want string) string {
	b.Helper()
	if !c.out.Scan() || !strings.HasPrefix(c.out.Text(), want) {
		b.Fatalf("receiver said %q (%v), want %q", c.out.Text(), c.out.Err(), want)
	}
	return c.out.Text()
}

// waitReady waits until the sender side of a room has the receiver's
// descriptor: the room is open, and a hop can start.
func waitReady(b testing.TB, m *transfer.Manager, room uint64) {
	b.Helper()
	for {
		st, reason, err := m.Status(room)
		switch {
		case err != nil:
			b.Fatal(err)
		case st == transfer.Failed:
			b.Fatalf("room %d failed: %s", room, reason)
		case st != transfer.Bootstrapping:
			return
		}
		runtime.Gosched()
	}
}

// BenchmarkStream2P measures the shm backend's throughput between two
// processes in steady state: hops of one tensor each, back to back, with
// up to streamWindow rooms opened ahead or still being verified, so that
// one room's status sync and verification overlap the next room's copy.
// Everything is inside the timer (after a warm-up): open, Send, the
// receiver's Receive and both Removes. A plain copy of the same size, in
// the same run, is the baseline.
func BenchmarkStream2P(b *testing.B) {
	const streamWindow = 4
	bySize(b, func(b *testing.B, size int64, src tensor.Tensor) {
		dir := runDir(b)
		m := startManager(b, dir, "streamtx")
		c := startChild(b, dir)
		finished := make(chan uint64, streamWindow*2)
		go func() {
			defer close(finished)
			for c.out.Scan() {
				if c.out.Text() == "removed" {
					continue
				}
				id, ok := strings.CutPrefix(c.out.Text(), "done ")
				room, err := strconv.ParseUint(id, 10, 64)
				if !ok || err != nil {
					b.Errorf("receiver said %q", c.out.Text())
					return
				}
				finished <- room
			}
		}()
		open := func(room uint64) {
			ep, err := m.OpenSender(room)
			if err != nil {
				b.Fatal(err)
			}
			fmt.Fprintf(c.in, "stream %d %s %d\n", room, ep, size)
		}
		var sent, done uint64
		retire := func() {
			room, ok := <-finished
			if !ok {
				b.Fatal("the receiver stopped")
			}
			if err := m.Remove(room); err != nil {
				b.Fatal(err)
			}
			done++
		}
		hop := func() {
			sent++
			if err := m.Send(context.Background(), sent, []tensor.Tensor{src}); err != nil {
				b.Fatal(err)
			}
			open(sent + streamWindow)
			for sent-done >= streamWindow {
				retire()
			}
		}
		b.SetBytes(size)
		for room := uint64(1); room <= streamWindow; room++ {
			open(room)
		}
		// Warm up before b.Loop starts the timer: the receiver's
		// pool and the sender's mapping cache fill with the segments
		// the stream goes round (a fresh segment costs a page fault
		// per 4 KiB on both sides).
		for range 3 * streamWindow {
			hop()
		}
		for b.Loop() {
			hop()
		}
		for done < sent {
			retire()
		}
		b.StopTimer()
		for room := sent + 1; room <= sent+streamWindow; room++ {
			fmt.Fprintf(c.in, "remove %d\n", room)
			if err := m.Remove(room); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkHop2P measures one hop between two processes: the sender's
// Send, the copy into the receiver's shared memory, the status sync, and
// the receiver's verification, reported to the sender over a pipe. Room
// open (until the sender has the descriptor) and remove are outside the
// timer. A plain copy of the same size, in the same run, is the baseline,
// and each hop is also timed against a copy made just before it (x-copy)
// and against idealHop (x-ideal), the least a one-copy hop must do.
func BenchmarkHop2P(b *testing.B) {
	bySize(b, func(b *testing.B, size int64, src tensor.Tensor) {
		dir := runDir(b)
		dst := make([]byte, size)
		copy(dst, src.Data)
		ideal := make([]byte, size)
		benchHops(b, startManager(b, dir, "hoptx"), startChild(b, dir), sdk.BackendShm, src,
			baseline{"copy", func() { copy(dst, src.Data) }},
			baseline{"ideal", func() { idealHop(ideal, src.Data) }})
	})
}

// bySize runs, for tensors of 8 MiB and 64 MiB, a plain copy of the tensor
// as sub-benchmark copy-SIZE, the baseline; the least a one-copy hop with
// its checksums must do as ideal-SIZE (idealHop), the floor; and shm as
// shm-SIZE.
func bySize(b *testing.B, shm func(b *testing.B, size int64, src tensor.Tensor)) {
	for _, size := range []int64{8 << 20, 64 << 20} {
		name := fmt.Sprintf("%dMiB", size>>20)
		src, err := tensor.New(spec(size))
		if err != nil {
			b.Fatal(err)
		}
		for i := range src.Data {
			src.Data[i] = byte(i * 7)
		}
		b.Run("copy-"+name, func(b *testing.B) {
			dst := make([]byte, size)
			b.SetBytes(size)
			for b.Loop() {
				copy(dst, src.Data)
			}
		})
		b.Run("ideal-"+name, func(b *testing.B) {
			dst := make([]byte, size)
			b.SetBytes(size)
			for b.Loop() {
				if sent, got := idealHop(dst, src.Data); sent != got {
					b.Fatalf("checksums %x and %x", sent, got)
				}
			}
		})
		b.Run("shm-"+name, func(b *testing.B) { shm(b, size, src) })
	}
}

// idealHop is the work of a one-copy hop and nothing else, in this
// process: one goroutine copies src into dst block by block and hashes
// each block after copying it (the sender), another hashes each block of
// dst as soon as it is copied, spinning in between (the receiver). No
// second process, no wake-ups, no control block: on a machine whose
// memory bandwidth the copy already fills, no hop that keeps both
// checksums (the writer's and the receiver's) is faster. It returns both.
func idealHop(dst, src []byte) (sent, got uint64) {
	var copied atomic.Int64
	done := make(chan uint64)
	go func() {
		var chain tensor.Chain
		for off := 0; off < len(dst); off += tensor.ChecksumBlock {
			end := min(off+tensor.ChecksumBlock, len(dst))
			for copied.Load() < int64(end) {
				runtime.Gosched()
			}
			chain.Block(dst[off:end])
		}
		done <- chain.Sum()
	}()
	var chain tensor.Chain
	for off := 0; off < len(src); off += tensor.ChecksumBlock {
		end := min(off+tensor.ChecksumBlock, len(src))
		copy(dst[off:end], src[off:end])
		chain.Block(src[off:end])
		copied.Store(int64(end))
	}
	return chain.Sum(), <-done
}

// benchHops times hops of src from m to the receiving child c over rooms of
// the backend: from Send to the child's answer that it has received and
// verified them. Room open (until the sender has the descriptor) and
// remove are outside the timer. Before each hop, with the timer stopped,
// it times each baseline too, and reports the ratio of its total to the
// hops' as "x-NAME": measured alternately, both see the same load on a
// shared machine, which a baseline run as a sibling benchmark, seconds
// apart, does not.
func benchHops(b *testing.B, m *transfer.Manager, c *child, backend sdk.Backend, src tensor.Tensor, baselines ...baseline) {
	size, err := src.NumBytes()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	var hops time.Duration
	base := make([]time.Duration, len(baselines))
	each := func() {
		for i, bl := range baselines {
			start := time.Now()
			bl.run()
			base[i] += time.Since(start)
		}
	}
	room := uint64(0)
	for b.Loop() {
		b.StopTimer()
		room++
		h, _ := timedHop(b, m, c, backend, room, src, each)
		hops += h
		b.StartTimer()
	}
	for i, bl := range baselines {
		b.ReportMetric(base[i].Seconds()/hops.Seconds(), "x-"+bl.name)
	}
}

// baseline is what benchHops times beside each hop.
type baseline struct {
	name string
	run  func()
}

// timedHop makes one hop of t from m to the receiving child c over a new
// room, with the benchmark's timer stopped on entry and on return: it
// opens the room, times baseline, then, with the timer running, the hop
// from Send to the child's answer, and removes the room. It returns the
// hop's time and the baseline's.
func timedHop(b *testing.B, m *transfer.Manager, c *child, backend sdk.Backend, room uint64, t tensor.Tensor, baseline func()) (hop, base time.Duration) {
	size, err := t.NumBytes() // a device tensor has no Data
	if err != nil {
		b.Fatal(err)
	}
	ep, err := m.OpenSenderWith(room, backend)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(c.in, "hop %d %s %d\n", room, ep, size)
	c.expect(b, "open")
	waitReady(b, m, room)
	start := time.Now()
	baseline()
	base = time.Since(start)
	b.StartTimer()
	start = time.Now()
	if err := m.Send(context.Background(), room, []tensor.Tensor{t}); err != nil {
		b.Fatal(err)
	}
	c.expect(b, "ok")
	hop = time.Since(start)
	b.StopTimer()
	if err := m.Remove(room); err != nil {
		b.Fatal(err)
	}
	return hop, base
}

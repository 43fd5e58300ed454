package python_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// BenchmarkPythonHop measures one shm hop (open both sides, send, receive
// and verify every checksum, remove both sides) with a Python transfer
// manager on one or both sides, next to the Go↔Go hop of the same size in
// the same run, the baseline `make bench` divides by:
//
//   - go-SIZE: Go sender → Go receiver, in this process;
//   - py2py-SIZE: Python → Python, two managers in one Python process;
//   - go2py-SIZE: Go sender here → Python receiver in its own process;
//   - go2py-lend-SIZE: the same, the tensor written into Go's Alloc
//     memory (outside the timer) and lent, not copied (protocol 5.6);
//   - py2go-SIZE: Python sender → Go receiver here.
//
// The Python side (bench/hoppeer.py) is driven one line per hop over a
// pipe; that round trip (tens of µs) is counted in its hops.
func BenchmarkPythonHop(b *testing.B) {
	dir := runDir(b)
	goSide := goManager(b, dir, "gobench")
	peer := startPeer(b, dir)
	room := uint64(0)
	for _, size := range []int{8 << 20, 64 << 20} {
		spec := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{int64(size)}}
		src := pattern(b, spec)
		suffix := fmt.Sprintf("-%dMiB", size>>20)
		b.Run("go"+suffix, func(b *testing.B) {
			rcv := goManager(b, dir, "gorcv")
			hop := func() {
				room++
				ep, err := goSide.OpenSenderWith(room, sdk.BackendShm)
				check(b, err)
				check(b, rcv.OpenReceiverWith(room, sdk.BackendShm, ep, []tensor.Spec{spec}))
				sent := make(chan error, 1)
				go func() { sent <- goSide.Send(context.Background(), room, []tensor.Tensor{src}) }()
				_, done, err := rcv.Receive(context.Background(), room)
				check(b, err)
				done()
				check(b, <-sent)
				check(b, goSide.Remove(room))
				check(b, rcv.Remove(room))
			}
			hops(b, size, hop)
		})
		b.Run("py2py"+suffix, func(b *testing.B) {
			hop := func() {
				room++
				peer.expect(b, fmt.Sprintf("py2py %d %d", size, room), "ok")
			}
			hops(b, size, hop)
		})
		b.Run("go2py"+suffix, func(b *testing.B) {
			hop := func() {
				room++
				ep, err := goSide.OpenSenderWith(room, sdk.BackendShm)
				check(b, err)
				peer.expect(b, fmt.Sprintf("recv %d %d %s", size, room, ep), "open")
				check(b, goSide.Send(context.Background(), room, []tensor.Tensor{src}))
				peer.expect(b, "", "ok")
				check(b, goSide.Remove(room))
			}
			hops(b, size, hop)
		})
		b.Run("go2py-lend"+suffix, func(b *testing.B) {
			// The Go side writes its output into Alloc's memory (outside
			// the timer: that is the phase's work) and lends it.
			hop := func() {
				b.StopTimer()
				room++
				out, err := goSide.Alloc(spec)
				check(b, err)
				copy(out.Data, src.Data)
				check(b, goSide.Written(out, tensor.Checksum(src.Data)))
				b.StartTimer()
				ep, err := goSide.OpenSenderWith(room, sdk.BackendShm)
				check(b, err)
				peer.expect(b, fmt.Sprintf("recv %d %d %s", size, room, ep), "open")
				check(b, goSide.Send(context.Background(), room, []tensor.Tensor{out}))
				peer.expect(b, "", "ok")
				check(b, goSide.Remove(room))
				goSide.Free(out)
			}
			hops(b, size, hop)
		})
		b.Run("py2go"+suffix, func(b *testing.B) {
			rcv := goManager(b, dir, "gorcv2")
			hop := func() {
				room++
				ep := strings.TrimPrefix(peer.expect(b, fmt.Sprintf("send %d %d", size, room), "ep "), "ep ")
				check(b, rcv.OpenReceiverWith(room, sdk.BackendShm, ep, []tensor.Spec{spec}))
				got, done, err := rcv.Receive(context.Background(), room)
				check(b, err)
				if len(got) != 1 || got[0].Data[size-1] != src.Data[size-1] {
					b.Fatal("py2go: the received bytes differ from the pattern")
				}
				done()
				peer.expect(b, "", "ok")
				check(b, rcv.Remove(room))
			}
			hops(b, size, hop)
		})
	}
}

// hops times hop, one hop of size bytes, after one untimed hop that warms
// the receiver's segment pool and the sender's mapping cache.
func hops(b *testing.B, size int, hop func()) {
	hop()
	b.SetBytes(int64(size))
	for b.Loop() {
		hop()
	}
}

func check(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// pattern is the tensor bench/hoppeer.py sends: byte i is i*7 + i>>9.
func pattern(b *testing.B, s tensor.Spec) tensor.Tensor {
	x, err := tensor.New(s)
	check(b, err)
	fillPattern(x.Data)
	return x
}

// fillPattern fills p as bench/hoppeer.py's pattern: byte i is i*7 + i>>9.
func fillPattern(p []byte) {
	for i := range p {
		p[i] = byte(i*7 + i>>9)
	}
}

// runDir is a short directory for room sockets, removed at the end.
func runDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("/tmp", "pyb-")
	check(tb, err)
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// goManager starts a Go transfer manager named NAME.PID in dir, released
// at the end.
func goManager(tb testing.TB, dir, name string) *transfer.Manager {
	tb.Helper()
	m, err := transfer.New(transfer.Config{Dir: dir, Name: transfer.ProcessName(name, os.Getpid())})
	check(tb, err)
	check(tb, m.Start())
	tb.Cleanup(func() { _ = m.Release(context.Background()) })
	return m
}

// peer is bench/hoppeer.py, running, with its two managers pya.PID and
// pyb.PID.
type peer struct {
	pid int
	in  io.WriteCloser
	out *bufio.Scanner
}

// startPeer starts bench/hoppeer.py; at the test's end it asks it to quit
// (killing it after 10 s) and sweeps what its managers left.
func startPeer(tb testing.TB, dir string) *peer {
	tb.Helper()
	return startPeerWith(tb, dir, nil)
}

// startPeerWith is startPeer with env added to the peer's environment and
// args after its run directory (a peer timeout in seconds).
func startPeerWith(tb testing.TB, dir string, env []string, args ...string) *peer {
	tb.Helper()
	_, file, _, _ := runtimeCaller()
	cmd := exec.Command("/usr/bin/python3", append([]string{filepath.Join(filepath.Dir(file), "bench", "hoppeer.py"), dir}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &peer{pid: cmd.Process.Pid, in: in, out: bufio.NewScanner(out)}
	tb.Cleanup(func() {
		fmt.Fprintln(in, "quit")
		in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		for _, m := range []string{"pya", "pyb"} {
			_, _ = transfer.SweepSegments("", transfer.ProcessName(m, p.pid))
		}
	})
	p.expect(tb, "", "ready")
	return p
}

// expect sends line (if any) and returns the answer, which must start
// with want.
func (p *peer) expect(tb testing.TB, line, want string) string {
	tb.Helper()
	if line != "" {
		if _, err := fmt.Fprintln(p.in, line); err != nil {
			tb.Fatalf("hoppeer: %v", err)
		}
	}
	if !p.out.Scan() {
		tb.Fatalf("hoppeer ended (%v) while %q waited for %q", p.out.Err(), line, want)
	}
	got := p.out.Text()
	if !strings.HasPrefix(got, want) {
		tb.Fatalf("hoppeer answered %q to %q; want %q", got, line, want)
	}
	return got
}

package twoproc

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/internal/procmaps"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// senderEnv makes the test binary act as a sending process.
const senderEnv = "PHASED_HOPBENCH_SENDER"

// sender serves the parent, one command a line:
//
//	lend ROOM BYTES SEED  open the sending side → ep ENDPOINT; then
//	                      write an output of BYTES from Alloc (byte i is
//	                      i*7 ^ SEED), send it (lent)  → sent
//
// Any error ends the process with a message on stderr.
func sender(dir string, in io.Reader, out io.Writer) error {
	m, err := transfer.New(transfer.Config{Dir: dir, Name: fmt.Sprintf("hopsx.%d", os.Getpid())})
	if err != nil {
		return err
	}
	if err := m.Start(); err != nil {
		return err
	}
	defer m.Release(context.Background())
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "lend" {
			return fmt.Errorf("bad command %q", sc.Text())
		}
		room, _ := strconv.ParseUint(f[1], 10, 64)
		n, _ := strconv.ParseInt(f[2], 10, 64)
		seed, _ := strconv.Atoi(f[3])
		ep, err := m.OpenSender(room)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, "ep", ep)
		t, err := m.Alloc(spec(n))
		if err != nil {
			return err
		}
		fill(t.Data, byte(seed))
		if err := m.Send(context.Background(), room, []tensor.Tensor{t}); err != nil {
			return err
		}
		fmt.Fprintln(out, "sent")
	}
	return sc.Err()
}

func fill(b []byte, seed byte) {
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
}

// startSender starts the sending process; the test may kill it.
func startSender(t *testing.T, dir string) (*child, *exec.Cmd) {
	t.Helper()
	c := spawn(t, []string{senderEnv + "=" + dir}, killAndSweep("hopsx"))
	return c, c.cmd
}

// killAndSweep ends a child the test may have killed already, and removes
// the segments of its Manager, named prefix.PID.
func killAndSweep(prefix string) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_, _ = transfer.SweepSegments("", fmt.Sprintf("%s.%d", prefix, cmd.Process.Pid))
	}
}

// TestHandoffWriterDies: a sending process lends an output and is killed
// while this process still reads it. The bytes stay intact, the
// supervisor's sweep of the dead process's segments removes the output
// segment and its lend table, and once the lease is released and the room
// removed no mapping of them is left: their memory is freed.
func TestHandoffWriterDies(t *testing.T) {
	dir := runDir(t)
	rcv := startManager(t, dir, "hoprx")
	c, cmd := startSender(t, dir)
	name := fmt.Sprintf("hopsx.%d", cmd.Process.Pid)
	const n = 3 << 20
	fmt.Fprintf(c.in, "lend 1 %d 5\n", n)
	ep, ok := strings.CutPrefix(c.expect(t, "ep "), "ep ")
	if !ok {
		t.Fatal("no endpoint")
	}
	if err := rcv.OpenReceiver(1, ep, []tensor.Spec{spec(n)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, release, err := rcv.Receive(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	c.expect(t, "sent")
	if len(procmaps.Of(t, "phased-"+name+"-out-")) != 1 {
		t.Fatal("the tensor is not a mapping of the sender's output segment: it was not lent")
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	removed, err := transfer.SweepSegments("", name) // what the supervisor does when an instance exits
	if err != nil {
		t.Fatal(err)
	}
	if removed != 2 {
		t.Errorf("the sweep removed %d files of the dead sender, want 2 (its output segment and lend table)", removed)
	}
	want := make([]byte, n)
	fill(want, 5)
	if string(got[0].Data) != string(want) {
		t.Error("the lent bytes changed when their writer died")
	}
	release()
	if err := rcv.Remove(1); err != nil {
		t.Fatal(err)
	}
	if left := procmaps.Of(t, "phased-"+name+"-"); len(left) > 0 {
		t.Errorf("still mapped after the lease and the room went: %v", left)
	}
}

// TestHandoffReceiverDies: a receiving process takes a lent output and is
// killed before it gives it back; the sender takes the segment back and
// the next Alloc reuses it.
func TestHandoffReceiverDies(t *testing.T) {
	dir := runDir(t)
	snd := startManager(t, dir, "hoptx")
	c := startChildKillable(t, dir)
	const n = 1 << 20
	out, err := snd.Alloc(spec(n))
	if err != nil {
		t.Fatal(err)
	}
	fill(out.Data, 3)
	ep, err := snd.OpenSender(1)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c.in, "open 1 %s %d\n", ep, n)
	c.expect(t, "open")
	if err := snd.Send(context.Background(), 1, []tensor.Tensor{out}); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(c.in, "recv 1") // takes it; the room stays open
	want := make([]byte, n)
	fill(want, 3)
	c.expect(t, "ok "+strconv.FormatUint(tensor.Checksum(want), 10))
	snd.Free(out)
	if err := snd.Remove(1); err != nil {
		t.Fatal(err)
	}
	other, err := snd.Alloc(spec(n))
	if err != nil {
		t.Fatal(err)
	}
	if &other.Data[0] == &out.Data[0] {
		t.Fatal("a segment the receiver holds was handed out again")
	}
	snd.Free(other)

	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = c.cmd.Wait()
	again, err := snd.Alloc(spec(n))
	if err != nil {
		t.Fatal(err)
	}
	// The best fit of the two idle segments: the one the dead receiver
	// held is back (both are of one size; either proves nothing leaked,
	// so look at the count too).
	snd.Free(again)
	third, err := snd.Alloc(spec(n))
	if err != nil {
		t.Fatal(err)
	}
	fourth, err := snd.Alloc(spec(n))
	if err != nil {
		t.Fatal(err)
	}
	if p := [2]*byte{&third.Data[0], &fourth.Data[0]}; !(p[0] == &out.Data[0] || p[1] == &out.Data[0]) || !(p[0] == &other.Data[0] || p[1] == &other.Data[0]) {
		t.Error("two Allocs after the receiver died did not get back both segments")
	}
	snd.Free(third)
	snd.Free(fourth)
}

// startChildKillable is startChild for a receiving process the test kills.
func startChildKillable(t *testing.T, dir string) *child {
	t.Helper()
	return spawn(t, []string{childEnv + "=" + dir}, killAndSweep("hoprx"))
}

// BenchmarkHandoff2P measures one hop of an output produced in shared
// memory (Manager.Alloc) between two processes: from Send to the
// receiving process's answer that Receive returned it. Producing the
// output (writing it, hashing it while writing: Written) and room open
// and remove are outside the timer, as in BenchmarkHop2P. Before each hop
// a plain copy of the same size is timed, and the hop's time over the
// copy's is reported as floor-copy (the target: at most 0.5). "hashed"
// leaves the checksum to Send (hashed once after writing).
func BenchmarkHandoff2P(b *testing.B) {
	for _, size := range []int64{8 << 20, 64 << 20} {
		for _, written := range []bool{true, false} {
			name := fmt.Sprintf("lend-%dMiB", size>>20)
			if !written {
				name = fmt.Sprintf("lend-hashed-%dMiB", size>>20)
			}
			b.Run(name, func(b *testing.B) { benchHandoff(b, size, written) })
		}
	}
}

func benchHandoff(b *testing.B, size int64, written bool) {
	dir := runDir(b)
	m := startManager(b, dir, "hoptx")
	c := startChild(b, dir)
	src := make([]byte, size)
	fill(src, 1)
	dst := make([]byte, size)
	copy(dst, src)
	b.SetBytes(size)
	var hops, base time.Duration
	room := uint64(0)
	// hop makes one hop; the caller has stopped the timer, and hop runs
	// it for the hop only.
	hop := func() {
		room++
		out := writeOutput(b, m, spec(size), src, written)
		h, bl := timedHop(b, m, c, sdk.BackendShm, room, out, func() { copy(dst, src) })
		hops, base = hops+h, base+bl
		m.Free(out)
	}
	warmLoop(b, hop, func() { hops, base = 0, 0 })
	b.ReportMetric(hops.Seconds()/base.Seconds(), "floor-copy")
}

// warmLoop runs hop, which the benchmark's timer is stopped for and
// which runs it for what it measures, four times to warm up (the
// sender's pool and the receiver's mappings fill with the segments the
// hops go round: a new segment costs a page fault per 4 KiB on the
// writer, and MAP_POPULATE on the receiver), calls reset to forget what
// they measured, then runs it in b.Loop.
func warmLoop(b *testing.B, hop, reset func()) {
	b.StopTimer()
	for range 4 {
		hop()
	}
	reset()
	b.StartTimer()
	for b.Loop() {
		b.StopTimer()
		hop()
		b.StartTimer()
	}
}

// writeOutput is what a phase does that writes an output of spec s into
// m's Alloc memory: it copies src there one checksum block at a time,
// hashing each block while it is in cache, and, if written, tells m the
// checksum.
func writeOutput(b *testing.B, m *transfer.Manager, s tensor.Spec, src []byte, written bool) tensor.Tensor {
	out, err := m.Alloc(s)
	if err != nil {
		b.Fatal(err)
	}
	var chain tensor.Chain
	for off := 0; off < len(src); off += tensor.ChecksumBlock {
		end := min(off+tensor.ChecksumBlock, len(src))
		copy(out.Data[off:end], src[off:end])
		chain.Block(out.Data[off:end])
	}
	if written {
		if err := m.Written(out, chain.Sum()); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// wanSet is the hop set of Wan2.1 t2v from encoder to transformer that
// issue 14 names: two tensors of 8 MiB, one of 32 bytes and one of 4 KiB.
var wanSet = []tensor.Spec{
	{Name: "context", DType: tensor.Float32, Shape: []int64{512, 4096}},
	{Name: "clip", DType: tensor.Float32, Shape: []int64{512, 4096}},
	{Name: "timestep", DType: tensor.Int64, Shape: []int64{4}},
	{Name: "grid", DType: tensor.Float32, Shape: []int64{1024}},
}

// BenchmarkWanSet2P measures the Wan2.1 t2v hop set between two processes
// end to end: both sides of the room opened, the four tensors sent,
// received and verified, both sides removed, all inside the timer. With
// "lend" the two 8 MiB tensors were produced in shared memory (Alloc,
// hashed while written) and are lent, the small ones copied; with "copy"
// all four are copied. Issue 14's reference is the seed's in-process
// stand-in for the same work, 3.6 ms on a 2-vCPU VM (it cannot run here:
// it needs LightX2V and a Mooncake stand-in); a plain copy of the set's
// bytes, timed before each hop, is reported beside it (floor-copy: the
// hop's time over the copy's).
func BenchmarkWanSet2P(b *testing.B) {
	for _, lend := range []bool{true, false} {
		name := "copy"
		if lend {
			name = "lend"
		}
		b.Run(name, func(b *testing.B) {
			dir := runDir(b)
			m := startManager(b, dir, "hoptx")
			c := startChild(b, dir)
			src := make([]tensor.Tensor, len(wanSet))
			var total int64
			for i, s := range wanSet {
				t, err := tensor.New(s)
				if err != nil {
					b.Fatal(err)
				}
				fill(t.Data, byte(i))
				src[i] = t
				total += int64(len(t.Data))
			}
			dst := make([]byte, total)
			b.SetBytes(total)
			var hops, base time.Duration
			room := uint64(0)
			hop := func() {
				room++
				ts := slices.Clone(src)
				if lend {
					for i := range 2 {
						ts[i] = writeOutput(b, m, wanSet[i], src[i].Data, true)
					}
				}
				t := time.Now()
				off := 0
				for _, x := range src {
					off += copy(dst[off:], x.Data)
				}
				base += time.Since(t)
				b.StartTimer()
				t = time.Now()
				ep, err := m.OpenSender(room)
				if err != nil {
					b.Fatal(err)
				}
				fmt.Fprintf(c.in, "set %d %s\n", room, ep)
				if err := m.Send(context.Background(), room, ts); err != nil {
					b.Fatal(err)
				}
				if err := m.Remove(room); err != nil {
					b.Fatal(err)
				}
				c.expect(b, "ok")
				hops += time.Since(t)
				b.StopTimer()
				for _, x := range ts[:2] {
					m.Free(x)
				}
			}
			warmLoop(b, hop, func() { hops, base = 0, 0 })
			b.ReportMetric(hops.Seconds()/base.Seconds(), "floor-copy")
			b.ReportMetric(hops.Seconds()*1e3/float64(b.N), "ms/set")
		})
	}
}

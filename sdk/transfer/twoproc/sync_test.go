package twoproc

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phased/phased/sdk/tensor"
)

// BenchmarkStatusSync measures the status sync of a 64-byte hop between
// two processes: from the sender's Send (this process) to the receiving
// process's Receive returning the tensor verified, both read on
// CLOCK_MONOTONIC, over a room opened beforehand (the sender holds the
// descriptor). With so little data the time is the sync itself: on the
// shm fast path, the control block's done word and one futex wake-up. It
// reports p50 and p99, and, measured alternately while both sides are
// idle, its floor: a 64-byte round trip to another process over a pair of
// pipes (`cat` echoing), as pipe-rtt-p50-µs and floor-pipe-rtt, the sync's
// p50 over the floor's (issue 14's target: ≤ 2).
func BenchmarkStatusSync(b *testing.B) {
	echo := startEcho(b)
	var floor, lat []time.Duration
	dir := runDir(b)
	snd, c := startManager(b, dir, "synctx"), startChild(b, dir)
	x, err := tensor.New(spec(64))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	room := uint64(0)
	for b.Loop() {
		b.StopTimer()
		room++
		ep, err := snd.OpenSender(room)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(c.in, "hop %d %s %d\n", room, ep, 64)
		c.expect(b, "open")
		waitReady(b, snd, room)
		floor = append(floor, echo.roundTrip(b))
		b.StartTimer()
		t0 := monotonic()
		if err := snd.Send(ctx, room, []tensor.Tensor{x}); err != nil {
			b.Fatal(err)
		}
		f := strings.Fields(c.expect(b, "ok"))
		b.StopTimer()
		at, err := strconv.ParseInt(f[len(f)-1], 10, 64)
		if err != nil {
			b.Fatalf("receiver said %q: %v", f, err)
		}
		lat = append(lat, time.Duration(at-t0))
		if err := snd.Remove(room); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	slices.Sort(lat)
	slices.Sort(floor)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(floor[len(floor)/2].Nanoseconds())/1000, "pipe-rtt-p50-µs")
	b.ReportMetric(float64(lat[len(lat)/2])/float64(max(floor[len(floor)/2], 1)), "floor-pipe-rtt")
}

// monotonic reads CLOCK_MONOTONIC, which every process on the host shares,
// in nanoseconds.
func monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return ts.Nano()
}

// echo is another process that writes back what it reads (cat over two
// pipes): the floor of a cross-process round trip on this machine.
type echo struct {
	in  io.WriteCloser
	out io.Reader
	msg [64]byte
	got [64]byte
}

func startEcho(b *testing.B) *echo {
	b.Helper()
	cmd := exec.Command("cat")
	e := &echo{}
	var err error
	if e.in, err = cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	if e.out, err = cmd.StdoutPipe(); err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("the round-trip floor needs cat: %v", err)
	}
	b.Cleanup(func() {
		e.in.Close()
		_ = cmd.Wait()
	})
	return e
}

// roundTrip sends 64 bytes and reads them back.
func (e *echo) roundTrip(b *testing.B) time.Duration {
	start := time.Now()
	if _, err := e.in.Write(e.msg[:]); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(e.out, e.got[:]); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

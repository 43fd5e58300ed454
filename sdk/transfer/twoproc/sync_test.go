package twoproc

import (
	"context"
	"io"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/phased/phased/sdk/tensor"
)

// BenchmarkStatusSync measures the status sync of a hop: from the sender's
// Send of a 64-byte tensor to the receiver's Receive returning it verified,
// over a room opened beforehand (two managers in this process, real ipc
// sockets and shared memory). With so little data, the time is the
// Transferring and Success frames going through both managers' socket
// owners. It reports p50 and p99, and, measured alternately while both
// sides are idle, its floor: a 64-byte round trip to another process over
// a pair of pipes (`cat` echoing), as pipe-rtt-p50-µs and floor-pipe-rtt,
// the sync's p50 over the floor's (issue 14's target: ≤ 2).
func BenchmarkStatusSync(b *testing.B) {
	echo := startEcho(b)
	var floor []time.Duration
	dir := runDir(b)
	snd, rcv := startManager(b, dir, "synctx"), startManager(b, dir, "syncrx")
	x, err := tensor.New(tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{64}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var lat []time.Duration
	room := uint64(0)
	for b.Loop() {
		b.StopTimer()
		room++
		ep, err := snd.OpenSender(room)
		if err != nil {
			b.Fatal(err)
		}
		if err := rcv.OpenReceiver(room, ep, []tensor.Spec{x.Spec}); err != nil {
			b.Fatal(err)
		}
		sent := make(chan error, 1)
		b.StartTimer()
		t0 := time.Now()
		go func() { sent <- snd.Send(ctx, room, []tensor.Tensor{x}) }()
		_, done, err := rcv.Receive(ctx, room)
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		done()
		if err := <-sent; err != nil {
			b.Fatal(err)
		}
		if err := snd.Remove(room); err != nil {
			b.Fatal(err)
		}
		if err := rcv.Remove(room); err != nil {
			b.Fatal(err)
		}
		floor = append(floor, echo.roundTrip(b))
		b.StartTimer()
	}
	slices.Sort(lat)
	slices.Sort(floor)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(floor[len(floor)/2].Nanoseconds())/1000, "pipe-rtt-p50-µs")
	b.ReportMetric(float64(lat[len(lat)/2])/float64(max(floor[len(floor)/2], 1)), "floor-pipe-rtt")
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

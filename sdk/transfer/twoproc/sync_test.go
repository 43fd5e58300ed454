package twoproc

import (
	"context"
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
// owners. It reports p50 and p99.
func BenchmarkStatusSync(b *testing.B) {
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
		b.StartTimer()
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

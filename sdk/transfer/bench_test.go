package transfer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/phased/phased/sdk/tensor"
)

// BenchmarkHop measures one shm hop (open both sides, send, receive and
// verify, remove both sides) next to two baselines of the same size in the
// same run: copy, a plain copy, and copy+sum, the data work a hop cannot
// avoid (the sender's copy with its checksum fused in, then the receiver's
// checksum pass). `make bench` prints the ratios to copy. Rooms reuse the
// receiver's pooled segments; the pool warms in the first iterations.
func BenchmarkHop(b *testing.B) {
	for _, size := range []int{8 << 20, 64 << 20} {
		spec := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{int64(size)}}
		src := filled(b, spec, 7)
		suffix := fmt.Sprintf("-%dMiB", size>>20)
		b.Run("copy"+suffix, func(b *testing.B) {
			dst := make([]byte, size)
			copy(dst, src.Data) // fault its pages in before the timer starts
			b.SetBytes(int64(size))
			for b.Loop() {
				copy(dst, src.Data)
			}
		})
		b.Run("copy+sum"+suffix, func(b *testing.B) {
			dst := make([]byte, size)
			copy(dst, src.Data)
			b.SetBytes(int64(size))
			for b.Loop() {
				copy(dst, src.Data)
				if tensor.Checksum(dst) != tensor.Checksum(src.Data) {
					b.Fatal("checksum mismatch")
				}
			}
		})
		b.Run("shm"+suffix, func(b *testing.B) {
			p := newPair(b, nil)
			ctx := context.Background()
			ts := []tensor.Tensor{src}
			b.SetBytes(int64(size))
			room := uint64(0)
			hop := func() {
				room++
				p.open(b, room, []tensor.Spec{spec})
				if err := p.hop(ctx, room, ts, nil); err != nil {
					b.Fatal(err)
				}
				if err := p.snd.Remove(room); err != nil {
					b.Fatal(err)
				}
				if err := p.rcv.Remove(room); err != nil {
					b.Fatal(err)
				}
			}
			hop() // warms the pool and the sender's mapping cache
			for b.Loop() {
				hop()
			}
		})
	}
}

// BenchmarkRoomOpenRemove measures opening both sides of a room (sender
// bind, receiver segment, bind, connect and descriptor) and removing both,
// with no other room open and with 1,000 other rooms open on the same
// pair; it reports the median and 99th percentile of one open+remove.
func BenchmarkRoomOpenRemove(b *testing.B) {
	specs := []tensor.Spec{{Name: "x", DType: tensor.Float32, Shape: []int64{1024}}}
	for _, others := range []int{0, 1000} {
		b.Run(fmt.Sprintf("open-%d", others), func(b *testing.B) {
			p := newPair(b, nil)
			room := uint64(0)
			for range others {
				room++
				p.open(b, room, specs)
			}
			var lat []time.Duration
			for b.Loop() {
				room++
				start := time.Now()
				p.open(b, room, specs)
				if err := p.snd.Remove(room); err != nil {
					b.Fatal(err)
				}
				if err := p.rcv.Remove(room); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			us := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / 1e3 }
			b.ReportMetric(us(0.50), "p50-µs")
			b.ReportMetric(us(0.99), "p99-µs")
		})
	}
}

// BenchmarkZMQHop measures one zmq hop over tcp loopback (room opened
// beforehand; Send, the data streamed and received straight into the
// receiver's buffer, the status sync and the receiver's verification) next
// to raw libzmq PUSH/PULL of one message of the same size, in the same run;
// at 8 MiB also the hop with CURVE (Config.Curve) and raw PUSH/PULL with
// CURVE. `make bench` prints the ratios: zmq and curve to raw, curve to
// zmq (what CURVE costs a hop) and to raw+curve.
func BenchmarkZMQHop(b *testing.B) {
	for _, size := range []int64{8 << 20, 64 << 20} {
		name := fmt.Sprintf("%dMiB", size>>20)
		spec := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{size}}
		src := filled(b, spec, 7)
		raw := func(b *testing.B, keys *CurveKeys) {
			// A context per end, as a hop has (two managers): one I/O
			// thread for both ends makes this 4 times slower on two
			// cores, no floor.
			pull, push := rawSocket(b, rawContext(b), zmq.PULL), rawSocket(b, rawContext(b), zmq.PUSH)
			if keys != nil {
				// No ZAP handler in this context: libzmq admits any
				// client that knows the server's key.
				if err := errors.Join(curveServer(pull, keys), curveClient(push, keys.Public, keys)); err != nil {
					b.Fatal(err)
				}
			}
			if err := pull.Bind("tcp://127.0.0.1:*"); err != nil {
				b.Fatal(err)
			}
			ep, _ := pull.GetLastEndpoint()
			if err := push.Connect(ep); err != nil {
				b.Fatal(err)
			}
			if err := errors.Join(checkRaw(pull), checkRaw(push)); err != nil {
				b.Fatal(err)
			}
			// zmq_send and zmq_recv into one buffer, as a hop's sockets:
			// zmq4's RecvBytes would allocate 8 MiB per message.
			dst := make([]byte, size)
			b.SetBytes(size)
			for b.Loop() {
				if err := sendFrom(push, src.Data, 0); err != nil {
					b.Fatal(err)
				}
				n, err := recvInto(pull, dst, 0)
				if err != nil || int64(n) != size {
					b.Fatalf("received %d bytes, %v", n, err)
				}
			}
		}
		hop := func(b *testing.B, p *pair) {
			ctx := context.Background()
			ts := []tensor.Tensor{src}
			b.SetBytes(size)
			room := uint64(0)
			for b.Loop() {
				b.StopTimer()
				room++
				p.openZMQ(b, room, []tensor.Spec{spec})
				b.StartTimer()
				if err := p.hop(ctx, room, ts, nil); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := errors.Join(p.snd.Remove(room), p.rcv.Remove(room)); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		}
		b.Run("raw-"+name, func(b *testing.B) { raw(b, nil) })
		b.Run("zmq-"+name, func(b *testing.B) { hop(b, newPair(b, nil)) })
		if size > 8<<20 {
			continue
		}
		keys := curveKeys(b)
		b.Run("raw+curve-"+name, func(b *testing.B) { raw(b, &keys) })
		b.Run("curve-"+name, func(b *testing.B) { hop(b, newCurvePair(b)) })
	}
}

package transfer

import (
	"context"
	"testing"

	"github.com/phased/phased/sdk/tensor"
)

// BenchmarkHop measures one shm hop (open both sides, send, receive and
// verify, remove both sides) next to a plain copy of the same size in the
// same run; `make bench` prints the ratio of the two.
func BenchmarkHop(b *testing.B) {
	const size = 8 << 20
	spec := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{size}}
	src := filled(b, spec, 7)
	b.Run("copy-8MiB", func(b *testing.B) {
		dst := make([]byte, size)
		b.SetBytes(size)
		for b.Loop() {
			copy(dst, src.Data)
		}
	})
	b.Run("shm-8MiB", func(b *testing.B) {
		p := newPair(b, nil)
		ctx := context.Background()
		ts := []tensor.Tensor{src}
		b.SetBytes(size)
		room := uint64(0)
		for b.Loop() {
			room++
			p.open(b, room, []tensor.Spec{spec})
			if err := p.transfer(ctx, room, ts); err != nil {
				b.Fatal(err)
			}
			if err := p.snd.Remove(room); err != nil {
				b.Fatal(err)
			}
			if err := p.rcv.Remove(room); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRoomOpenRemove measures opening both sides of a room (sender
// bind, receiver segment, bind, connect and descriptor) and removing both.
func BenchmarkRoomOpenRemove(b *testing.B) {
	p := newPair(b, nil)
	specs := []tensor.Spec{{Name: "x", DType: tensor.Float32, Shape: []int64{1024}}}
	room := uint64(0)
	for b.Loop() {
		room++
		p.open(b, room, specs)
		if err := p.snd.Remove(room); err != nil {
			b.Fatal(err)
		}
		if err := p.rcv.Remove(room); err != nil {
			b.Fatal(err)
		}
	}
}

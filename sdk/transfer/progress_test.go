package transfer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/sdk/tensor"
)

// verified returns how many bytes of a receiver room a Receive has hashed.
func verified(m *Manager, room uint64) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.rooms[room]; r != nil {
		return r.hashed
	}
	return 0
}

// pausedSender returns a pair whose sender's worker, after copying a
// block, says so on copied and waits for step: after every block, or with
// firstOnly after the first block of each room.
func pausedSender(t *testing.T, firstOnly bool) (*pair, chan struct{}, chan struct{}) {
	t.Helper()
	copied, step := make(chan struct{}), make(chan struct{})
	seen := map[uint64]bool{} // worker goroutine only
	p := newPair(t, func(m *Manager) {
		onChunk(t, m, func(room uint64) {
			if firstOnly && seen[room] {
				return
			}
			seen[room] = true
			copied <- struct{}{}
			<-step
		})
	})
	return p, copied, step
}

// A Receive waiting while the sender copies verifies each block as the
// sender reports it, so that at Success only the last is left.
func TestReceiveVerifiesWhileSenderCopies(t *testing.T) {
	const room = 1
	p, copied, step := pausedSender(t, false)
	// Two tensors: 3.5 blocks, then an empty one, then 1 block.
	a := filled(t, tensor.Spec{Name: "a", DType: tensor.Uint8, Shape: []int64{3*chunkSize + chunkSize/2}}, 1)
	e := filled(t, tensor.Spec{Name: "e", DType: tensor.Float32, Shape: []int64{0}}, 2)
	b := filled(t, tensor.Spec{Name: "b", DType: tensor.Uint8, Shape: []int64{chunkSize}}, 3)
	ts := []tensor.Tensor{a, e, b}
	p.open(t, room, specsOf(ts))

	sent := make(chan error, 1)
	go func() { sent <- p.snd.Send(context.Background(), room, ts) }()
	type result struct {
		got []tensor.Tensor
		err error
	}
	received := make(chan result, 1)
	var release func()
	go func() {
		got, rel, err := p.rcv.Receive(context.Background(), room)
		release = rel
		received <- result{got, err}
	}()
	// After each block the sender stops: the receiver catches up with it.
	for _, want := range []uint64{chunkSize, 2 * chunkSize, 3 * chunkSize, uint64(len(a.Data))} {
		<-copied
		eventually(t, "the receiver to verify what was copied", func() bool { return verified(p.rcv, room) == want })
		step <- struct{}{}
	}
	<-copied
	step <- struct{}{}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	r := <-received
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer release()
	if err := sameTensors(r.got, ts); err != nil {
		t.Fatal(err)
	}
	if got, want := verified(p.rcv, room), uint64(len(a.Data)+len(b.Data)); got != want {
		t.Fatalf("verified %d bytes, want %d", got, want)
	}
}

// A Receive sleeping on the control block returns when its context ends or
// the room is removed: woken by the change (the safety timeout is an hour
// here, so a lost wake hangs the test).
func TestReceiveSleepingWakes(t *testing.T) {
	old := maxSleep
	maxSleep = time.Hour
	t.Cleanup(func() { maxSleep = old })
	p, copied, step := pausedSender(t, true)
	big := filled(t, tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{4 * chunkSize}}, 4)
	for room, cause := range map[uint64]string{1: "cancel", 2: "remove"} {
		p.open(t, room, []tensor.Spec{big.Spec})
		sent := make(chan error, 1)
		go func() { sent <- p.snd.Send(context.Background(), room, []tensor.Tensor{big}) }()
		<-copied // the worker holds the room after one block
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, _, err := p.rcv.Receive(ctx, room)
			errc <- err
		}()
		eventually(t, "the receiver to verify the first block", func() bool { return verified(p.rcv, room) == chunkSize })
		eventually(t, "the receiver to sleep", func() bool {
			p.rcv.mu.Lock()
			defer p.rcv.mu.Unlock()
			return p.rcv.rooms[room].sleeping
		})
		var want error
		if cause == "cancel" {
			cancel()
			want = context.Canceled
		} else {
			if err := p.rcv.Remove(room); err != nil {
				t.Fatal(err)
			}
			want = ErrRemoved
		}
		if err := <-errc; !errors.Is(err, want) {
			t.Fatalf("%s: Receive = %v, want %v", cause, err, want)
		}
		cancel()
		removed := make(chan error, 1)
		go func() { removed <- p.snd.Remove(room) }()
		// The worker may go on only once the remove has marked the room:
		// else it may finish the copy first and the Send succeed.
		eventually(t, "the sender's remove to mark the room", func() bool {
			st, reason, err := p.snd.Status(room)
			return err == nil && st == Failed && reason == "removed"
		})
		step <- struct{}{} // let the worker see the abort
		if err := <-removed; err != nil {
			t.Fatal(err)
		}
		if err := <-sent; !errors.Is(err, ErrRemoved) {
			t.Fatalf("Send = %v, want ErrRemoved", err)
		}
		if err := p.rcv.Remove(room); err != nil {
			t.Fatal(err)
		}
	}
}

// Progress beyond the buffers is clamped: the verifier hashes exactly the
// buffers, empty ones included.
func TestVerifierClampsProgress(t *testing.T) {
	specs := []tensor.Spec{
		{Name: "a", DType: tensor.Uint8, Shape: []int64{chunkSize + 3}},
		{Name: "e", DType: tensor.Int64, Shape: []int64{0}},
		{Name: "b", DType: tensor.Uint8, Shape: []int64{5}},
	}
	bufs, size, err := layout(specs, ctrlSize)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 13)
	}
	var v verifier
	if v.advance(bufs, data, chunkSize-1) {
		t.Fatal("hashed part of a block")
	}
	if !v.advance(bufs, data, 1<<62) || v.pos != chunkSize+3+5 || len(v.sums) != 3 {
		t.Fatalf("after progress 2^62: pos %d, %d sums", v.pos, len(v.sums))
	}
	for i, b := range bufs {
		if want := tensor.Checksum(data[b.offset : b.offset+b.length]); v.sums[i] != want {
			t.Errorf("buffer %d: sum %x, want %x", i, v.sums[i], want)
		}
	}
	if v.advance(bufs, data, 1<<63) {
		t.Fatal("hashed past the end")
	}
}

// A sender that rewrites a block after reporting it copied cannot make the
// receiver accept bytes that differ from what it verified.
func TestControlBlockTampering(t *testing.T) {
	p := newPair(t, nil)
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{2 * chunkSize}}, 5)

	// A block changed after the receiver verified it: the room fails.
	const room2 = 2
	p.open(t, room2, []tensor.Spec{x.Spec})
	p.rcv.mu.Lock()
	r := p.rcv.rooms[room2]
	p.rcv.mu.Unlock()
	data, _ := r.seg.acquire()
	defer func() { _ = r.seg.release() }()
	buf := data[r.bufs[0].offset : r.bufs[0].offset+r.bufs[0].length]
	copy(buf, x.Data)
	// Move the room to Transferring as a sender does, report all of it
	// copied, let a Receive hash it, then change a byte and report
	// Success with the checksum of the changed bytes.
	p.rcv.mu.Lock()
	p.rcv.setStatusLocked(r, Transferring, "")
	p.rcv.mu.Unlock()
	r.ctrl.publish(uint64(len(buf)))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := p.rcv.Receive(ctx, room2)
		errc <- err
	}()
	eventually(t, "the receiver to verify the whole buffer", func() bool { return verified(p.rcv, room2) == uint64(len(buf)) })
	buf[5] ^= 0xff
	p.rcv.mu.Lock()
	r.final = []header{{spec: cloneSpec(x.Spec), length: uint64(len(buf)), sum: tensor.Checksum(buf)}}
	r.notify()
	p.rcv.mu.Unlock()
	err := <-errc
	cancel()
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), `tensor 0 "x": checksum mismatch`) {
		t.Fatalf("Receive = %v, want a checksum mismatch", err)
	}
}

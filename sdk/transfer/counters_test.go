package transfer

import (
	"context"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// TestCounters: each manager counts, per backend, what it sent and
// received: the calls and the bytes of the receiver's buffers (only the
// outputs the receiver declared are sent), and SendN returns the same
// bytes.
func TestCounters(t *testing.T) {
	p := newPair(t, nil)
	ctx := context.Background()
	a := filled(t, tensor.Spec{Name: "a", DType: tensor.Float32, Shape: []int64{1000}}, 1)
	b := filled(t, tensor.Spec{Name: "b", DType: tensor.Uint8, Shape: []int64{77}}, 2)
	// Room 1 declares both; room 2 only a (b is not sent).
	p.open(t, 1, specsOf([]tensor.Tensor{a, b}))
	if err := p.transfer(ctx, 1, []tensor.Tensor{a, b}); err != nil {
		t.Fatal(err)
	}
	p.openWith(t, sdk.BackendZMQ, 2, specsOf([]tensor.Tensor{a}))
	sent := make(chan int64, 1)
	go func() {
		n, err := p.snd.SendN(ctx, 2, []tensor.Tensor{a, b})
		if err != nil {
			t.Error(err)
		}
		sent <- n
	}()
	_, release, err := p.rcv.Receive(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if n := <-sent; n != 4000 {
		t.Errorf("SendN of room 2 returned %d bytes, want 4000 (a only)", n)
	}
	got := p.snd.Counters()
	if len(got) != 2 || got[0].Backend != sdk.BackendShm || got[0].Sent != 1 || got[0].SentBytes != 4077 ||
		got[1].Backend != sdk.BackendZMQ || got[1].Sent != 1 || got[1].SentBytes != 4000 || got[0].SendTime <= 0 || got[0].Received != 0 {
		t.Errorf("sender's counters %+v; want shm 1 sent of 4077 bytes, zmq 1 of 4000", got)
	}
	rcv := p.rcv.Counters()
	if len(rcv) != 2 || rcv[0].Received != 1 || rcv[0].ReceivedBytes != 4077 || rcv[1].Received != 1 || rcv[1].ReceivedBytes != 4000 || rcv[0].Sent != 0 {
		t.Errorf("receiver's counters %+v; want shm 1 received of 4077 bytes, zmq 1 of 4000", rcv)
	}
}

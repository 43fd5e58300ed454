package phasetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/proto/phasedv1"
	"github.com/phased/phased/sdk/transfer"
)

// checkHostile sends what no correct peer sends and checks that the
// instance fails only the room concerned, or drops and counts the frame,
// and then still serves.
func (k *kit) checkHostile(t *testing.T, in configuredInstance) {
	t.Run("Descriptors", func(t *testing.T) { k.hostileDescriptors(t, in) })
	t.Run("Dropped", func(t *testing.T) { k.droppedFrames(t, in) })
	if len(in.inputs) > 0 {
		t.Run("BadChecksum", func(t *testing.T) { k.badChecksum(t, in) })
	}
	t.Run("StillServes", func(t *testing.T) { k.checkTransfer(t, in, sdk.BackendShm) })
}

// fakeSegment is the name of the segment a fake receiver in dir names in
// its descriptor for room: phased-NAME-ROOM-1, NAME a ProcessName of this
// process made unique by dir, so that kits running in parallel in one test
// process (t.Parallel) never name the same segment.
func fakeSegment(dir string, room uint64) string {
	return fmt.Sprintf("phased-%s-%d-1", transfer.ProcessName("phasetest-"+filepath.Base(dir), os.Getpid()), room)
}

// goodDescriptor is a descriptor a receiver could send for room: one
// buffer of four float32s after the control block of a 4 KiB segment.
func goodDescriptor(dir string, room uint64) *phasedv1.Descriptor {
	return &phasedv1.Descriptor{
		Version:        1,
		Room:           room,
		Generation:     1,
		StatusEndpoint: "ipc://" + filepath.Join(dir, fmt.Sprintf("st-%d.sock", room)),
		Segment:        fakeSegment(dir, room),
		SegmentSize:    4096,
		Buffers:        []*phasedv1.TensorHeader{{Name: "x", Dtype: 1, Shape: []int64{4}, Offset: 64, Length: 16}},
	}
}

// createSegment creates the segment goodDescriptor(dir, room) names, 4 KiB
// of zeros, removed when the test ends.
func createSegment(t *testing.T, dir string, room uint64) {
	t.Helper()
	path := filepath.Join(transfer.DefaultShmDir, fakeSegment(dir, room))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		err = errors.Join(f.Truncate(4096), f.Close())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
}

// hostileDescriptors: the descriptor of a real segment is taken (the room
// waits for its input), and each one spoilt as below fails its room, with
// a reason.
func (k *kit) hostileDescriptors(t *testing.T, in configuredInstance) {
	f := newFakeSender(t)
	cases := []struct {
		name  string
		spoil func(d *phasedv1.Descriptor)
	}{
		{"", func(*phasedv1.Descriptor) {}}, // unspoilt
		{"buffer past the segment", func(d *phasedv1.Descriptor) { d.Buffers[0].Offset = 4090 }},
		{"buffer over the control block", func(d *phasedv1.Descriptor) { d.Buffers[0].Offset = 0 }},
		{"overlapping buffers", func(d *phasedv1.Descriptor) {
			d.Buffers = append(d.Buffers, &phasedv1.TensorHeader{Name: "y", Dtype: 1, Shape: []int64{4}, Offset: 72, Length: 16})
		}},
		{"segment outside the shared-memory directory", func(d *phasedv1.Descriptor) {
			d.Segment = fmt.Sprintf("phased-../../../tmp/x-%d-1", d.Room)
		}},
		{"length that is not its spec's", func(d *phasedv1.Descriptor) { d.Buffers[0].Length = 20 }},
		{"unknown dtype", func(d *phasedv1.Descriptor) { d.Buffers[0].Dtype = 99 }},
		{"negative dimension", func(d *phasedv1.Descriptor) { d.Buffers[0].Shape = []int64{-4} }},
		{"status endpoint that is neither ipc nor tcp", func(d *phasedv1.Descriptor) { d.StatusEndpoint = "http://example.com/x" }},
		{"segment of another room", func(d *phasedv1.Descriptor) { d.Segment = fmt.Sprintf("phased-phasetest-%d-1", d.Room+1) }},
	}
	ctx := k.call(t)
	for i, c := range cases {
		room := uint64(100 + i)
		ep, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleSender, Request: k.request(t)})
		if err != nil {
			t.Fatalf("OpenRoom(%d, sender): %v", room, err)
		}
		createSegment(t, f.dir, room)
		d := goodDescriptor(f.dir, room)
		c.spoil(d)
		send(t, f.push(ep), d)
		want := sdk.StatusFailed
		if c.name == "" {
			want = sdk.StatusWaitingForInput
		}
		var st sdk.RoomInfo
		err = waitFor(k.c.Settle, func() bool {
			st = roomInfo(ctx, in, room)
			return st.Status == want
		})
		switch {
		case c.name == "" && err != nil:
			t.Errorf("a good descriptor: room %d is %s (reason %q); want WaitingForInput", room, st.Status, st.Reason)
		case c.name != "" && (err != nil || st.Reason == ""):
			t.Errorf("%s: room %d is %s (reason %q); want Failed with a reason", c.name, room, st.Status, st.Reason)
		}
		if err := in.ctl.RemoveRoom(ctx, room); err != nil {
			t.Errorf("%s: RemoveRoom(%d): %v", c.name, room, err)
		}
	}
}

// droppedFrames: a frame for another room, of another version, or that is
// not a descriptor at all is dropped and counted; the room it arrived on
// is not touched.
func (k *kit) droppedFrames(t *testing.T, in configuredInstance) {
	f := newFakeSender(t)
	ctx := k.call(t)
	const room = 200
	ep, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleSender, Request: k.request(t)})
	if err != nil {
		t.Fatal(err)
	}
	before := dropped(ctx, in)
	push := f.push(ep)
	other := goodDescriptor(f.dir, room+1)
	v2 := goodDescriptor(f.dir, room)
	v2.Version = 2
	for _, m := range []any{other, v2, []byte{0xff, 0xff, 0xff, 0x07}} {
		send(t, push, m)
	}
	if err := waitFor(k.c.Settle, func() bool { return dropped(ctx, in) >= before+3 }); err != nil {
		t.Errorf("dropped frames %d after 3 bad ones, %d before", dropped(ctx, in), before)
	}
	if st := roomInfo(ctx, in, room); st.Status != sdk.StatusBootstrapping {
		t.Errorf("room %d after frames meant for others: %s (%q); want Bootstrapping", room, st.Status, st.Reason)
	}
	if err := in.ctl.RemoveRoom(ctx, room); err != nil {
		t.Error(err)
	}
}

// badChecksum: a Success whose checksum does not match what the segment
// holds fails the receiving room and its Run; a status frame of another
// generation is dropped on the way.
func (k *kit) badChecksum(t *testing.T, in configuredInstance) {
	f := newFakeSender(t)
	ctx := k.call(t)
	const room = 300
	req := k.request(t)
	if _, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleReceiver, Request: req, PeerEndpoint: f.endpoint}); err != nil {
		t.Fatal(err)
	}
	d, err := f.descriptor(room)
	if err != nil {
		t.Fatalf("the receiver's descriptor: %v", err)
	}
	ran := make(chan error, 1)
	go func() { _, err := in.ctl.Run(ctx, sdk.RunSpec{Request: req, InRoom: room}); ran <- err }()
	status := f.push(d.GetStatusEndpoint())
	frame := func(gen uint64, st phasedv1.TransferStatus) *phasedv1.StatusFrame {
		return &phasedv1.StatusFrame{Version: 1, Room: room, Generation: gen, Status: st}
	}
	before := dropped(ctx, in)
	send(t, status, frame(d.GetGeneration()+1, phasedv1.TransferStatus_TRANSFER_STATUS_TRANSFERRING))
	if err := waitFor(k.c.Settle, func() bool { return dropped(ctx, in) > before }); err != nil {
		t.Errorf("a status frame of another generation was not dropped and counted")
	}
	send(t, status, frame(d.GetGeneration(), phasedv1.TransferStatus_TRANSFER_STATUS_TRANSFERRING))
	success := frame(d.GetGeneration(), phasedv1.TransferStatus_TRANSFER_STATUS_SUCCESS)
	for _, b := range d.GetBuffers() {
		success.Tensors = append(success.Tensors, &phasedv1.TensorHeader{Name: b.GetName(), Dtype: b.GetDtype(), Shape: b.GetShape(), Length: b.GetLength(), Xxh3: 0xdeadbeefdeadbeef})
	}
	send(t, status, success)
	if err := <-ran; err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Run with a bad checksum: %v; want it to fail", err)
	}
	if st := roomInfo(ctx, in, room); st.Status != sdk.StatusFailed || st.Reason == "" {
		t.Errorf("room %d after a bad checksum: %s (%q); want Failed with a reason", room, st.Status, st.Reason)
	}
	if err := in.ctl.RemoveRoom(ctx, room); err != nil {
		t.Error(err)
	}
}

// roomInfo returns what Status says of room (the zero RoomInfo if it is
// not listed).
func roomInfo(ctx context.Context, in configuredInstance, room uint64) sdk.RoomInfo {
	st, err := in.ctl.Status(ctx)
	if err != nil {
		return sdk.RoomInfo{}
	}
	for _, r := range st.Rooms {
		if r.Room == room {
			return r
		}
	}
	return sdk.RoomInfo{}
}

// dropped returns the frames the instance has dropped.
func dropped(ctx context.Context, in configuredInstance) uint64 {
	st, err := in.ctl.Status(ctx)
	if err != nil {
		return 0
	}
	return st.DroppedFrames
}

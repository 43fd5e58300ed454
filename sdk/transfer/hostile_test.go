package transfer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phased/phased/sdk/proto/phasedv1"
	"github.com/phased/phased/sdk/tensor"
)

// rawContext is the test's own zmq context, standing in for a hostile or
// hand-written peer. Sockets made by rawSocket close before it terminates.
func rawContext(t testing.TB) *zmq.Context {
	t.Helper()
	zctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { zctx.Term() })
	return zctx
}

func rawSocket(t testing.TB, zctx *zmq.Context, typ zmq.Type) *zmq.Socket {
	t.Helper()
	s, err := zctx.NewSocket(typ)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRcvtimeo(5 * time.Second); err != nil { // tests only
		t.Fatal(err)
	}
	return s
}

func mustSend(t testing.TB, s *zmq.Socket, b []byte) {
	t.Helper()
	if _, err := s.SendBytes(b, 0); err != nil {
		t.Fatal(err)
	}
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeSegment creates a file in the default ShmDir that no manager of the
// test owns, and returns its name.
func fakeSegment(t *testing.T, name string, size int64) string {
	t.Helper()
	path := filepath.Join(DefaultShmDir, name)
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
	return name
}

func TestHostileDescriptors(t *testing.T) {
	p := newPair(t, nil)
	zctx := rawContext(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A healthy room runs while the hostile ones fail.
	healthy := []tensor.Tensor{filled(t, tensor.Spec{Name: "latent", DType: tensor.Float32, Shape: []int64{2048, 1024}}, 1)}
	p.open(t, 1, specsOf(healthy))
	healthyErr := make(chan error, 1)
	go func() { healthyErr <- p.transfer(ctx, 1, healthy) }()

	// Each hostile room gets a fake segment named for its room and
	// generation, which no manager of the test owns.
	segOf := func(room uint64) string { return fmt.Sprintf("phased-%sfake-%d-5", p.sn, room) }
	linkTo := func(room uint64) string {
		link := fmt.Sprintf("phased-%slink-%d-5", p.sn, room)
		if err := os.Symlink(filepath.Join(DefaultShmDir, segOf(room)), filepath.Join(DefaultShmDir, link)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(filepath.Join(DefaultShmDir, link)) })
		return link
	}

	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{16}}, 3) // 64 bytes
	base := func() *phasedv1.Descriptor {
		return &phasedv1.Descriptor{
			Version:        wireVersion,
			Generation:     5,
			StatusEndpoint: "ipc://" + filepath.Join(p.dir, "nobody.sock"),
			SegmentSize:    4096,
			Buffers:        []*phasedv1.TensorHeader{{Name: "x", Dtype: uint32(tensor.Float32), Shape: []int64{16}, Offset: 128, Length: 64}},
		}
	}
	tests := []struct {
		name string
		edit func(d *phasedv1.Descriptor)
		want string // in the room's reason
	}{
		{"offset out of bounds", func(d *phasedv1.Descriptor) { d.Buffers[0].Offset = 4090 },
			`buffer 0 "x": offset 4090 + length 64 is out of bounds of the 4096-byte segment`},
		{"offset overflows", func(d *phasedv1.Descriptor) { d.Buffers[0].Offset = math.MaxUint64 - 8 },
			"is out of bounds of the 4096-byte segment"},
		{"length does not match shape", func(d *phasedv1.Descriptor) { d.Buffers[0].Length = 128 },
			`buffer 0 "x": length 128, but x:float32[16] is 64 bytes`},
		{"unknown dtype", func(d *phasedv1.Descriptor) { d.Buffers[0].Dtype = 99 },
			"unknown dtype 99"},
		{"two buffers with one name", func(d *phasedv1.Descriptor) {
			d.Buffers = append(d.Buffers, &phasedv1.TensorHeader{Name: "x", Dtype: uint32(tensor.Float32), Shape: []int64{16}, Offset: 256, Length: 64})
		}, `descriptor: two buffers are named "x"`},
		{"overlapping buffers", func(d *phasedv1.Descriptor) {
			d.Buffers = append(d.Buffers, &phasedv1.TensorHeader{Name: "y", Dtype: uint32(tensor.Uint8), Shape: []int64{64}, Offset: 160, Length: 64})
		}, `buffers "x" and "y" overlap`},
		{"path traversal", func(d *phasedv1.Descriptor) { d.Segment = "../etc/passwd" },
			`bad segment name "../etc/passwd"`},
		{"slash in segment name", func(d *phasedv1.Descriptor) { d.Segment = "phased-x/../y" },
			`bad segment name "phased-x/../y"`},
		{"zero segment size", func(d *phasedv1.Descriptor) { d.SegmentSize = 0 },
			"segment size 0 is out of range (64.."},
		{"buffer over the control block", func(d *phasedv1.Descriptor) { d.Buffers[0].Offset = 32 },
			`descriptor: buffer 0 "x": offset 32 is inside the segment's 64-byte control block`},
		{"checksum table over a buffer", func(d *phasedv1.Descriptor) { d.ChecksumOffset = 184 },
			`descriptor: buffers "x" and "(checksum table)" overlap`},
		{"checksum table in the control block", func(d *phasedv1.Descriptor) { d.ChecksumOffset = 8 },
			"descriptor: checksum offset 8: want a multiple of 8 after the 64-byte control block"},
		{"checksum table unaligned", func(d *phasedv1.Descriptor) { d.ChecksumOffset = 260 },
			"descriptor: checksum offset 260: want a multiple of 8"},
		{"checksum table out of bounds", func(d *phasedv1.Descriptor) { d.ChecksumOffset = 4096 },
			"descriptor: checksum offset 4096 + 8 bytes is out of bounds of the 4096-byte segment"},
		{"checksum table wraps", func(d *phasedv1.Descriptor) { d.ChecksumOffset = math.MaxUint64 - 7 },
			"is out of bounds of the 4096-byte segment"},
		{"bad status endpoint", func(d *phasedv1.Descriptor) { d.StatusEndpoint = "inproc://phased-transfer-wake" },
			`descriptor: status endpoint "inproc://phased-transfer-wake": want ipc://PATH or tcp://HOST:PORT`},
		// Checked by the worker when Send runs:
		{"segment size mismatch", func(d *phasedv1.Descriptor) { d.SegmentSize = 8192 },
			"is 4096 bytes, the descriptor says 8192"},
		{"missing segment", func(d *phasedv1.Descriptor) { d.Segment = fmt.Sprintf("phased-%smissing-%d-5", p.sn, d.Room) },
			"no such file or directory"},
		{"symlinked segment", func(d *phasedv1.Descriptor) { d.Segment = linkTo(d.Room) },
			unix.ELOOP.Error()},
		{"another room's segment", func(d *phasedv1.Descriptor) { d.Segment = segOf(1) },
			`fake-1-5" is not the segment of room `},
		{"shape differs from Send", func(d *phasedv1.Descriptor) { d.Buffers[0].Shape = []int64{4, 4} },
			"send: tensor 0 x:float32[16] does not match the receiver's buffer x:float32[4 4]"},
		{"buffer the sender does not have", func(d *phasedv1.Descriptor) { d.Buffers[0].Name = "y" },
			`send: the receiver asks for tensor "y"; the sender has ["x"]`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			room := uint64(100 + i)
			ep, err := p.snd.OpenSender(room)
			if err != nil {
				t.Fatal(err)
			}
			push := rawSocket(t, zctx, zmq.PUSH)
			if err := push.Connect(ep); err != nil {
				t.Fatal(err)
			}
			seg := fakeSegment(t, segOf(room), 4096)
			d := base()
			d.Room, d.Segment = room, seg
			tt.edit(d)
			mustSend(t, push, marshal(t, d))

			err = p.snd.Send(ctx, room, []tensor.Tensor{x})
			if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Send = %v, want ErrFailed with %q", err, tt.want)
			}
			st, reason, err := p.snd.Status(room)
			if err != nil || st != Failed || !strings.Contains(reason, tt.want) {
				t.Fatalf("Status = %s %q %v, want Failed with %q", st, reason, err, tt.want)
			}
			if b, err := os.ReadFile(filepath.Join(DefaultShmDir, seg)); err != nil || strings.Trim(string(b), "\x00") != "" {
				t.Fatalf("the fake segment was written (%v)", err)
			}
			if err := p.snd.Remove(room); err != nil {
				t.Fatal(err)
			}
		})
	}
	if err := <-healthyErr; err != nil {
		t.Fatalf("healthy room: %v", err)
	}
	wantStatus(t, p.snd, 1, Success)
	if n := p.snd.Dropped(); n != 0 {
		t.Errorf("%d frames dropped, want 0 (hostile descriptors fail their room)", n)
	}
}

func TestDroppedDescriptors(t *testing.T) {
	p := newPair(t, nil)
	zctx := rawContext(t)
	const room = 5
	ep, err := p.snd.OpenSender(room)
	if err != nil {
		t.Fatal(err)
	}
	push := rawSocket(t, zctx, zmq.PUSH)
	if err := push.Connect(ep); err != nil {
		t.Fatal(err)
	}
	valid := func(room uint64, version uint32) []byte {
		return marshal(t, &phasedv1.Descriptor{
			Version: version, Room: room, Generation: 1, StatusEndpoint: "ipc://" + filepath.Join(p.dir, "nobody.sock"),
			Segment: "phased-" + p.sn + "fake", SegmentSize: 64,
		})
	}
	mustSend(t, push, valid(999, wireVersion)) // another room's descriptor on this socket
	mustSend(t, push, valid(room, 2))          // unknown version
	mustSend(t, push, []byte("\xff\xff\xffnot a protobuf"))
	eventually(t, "3 dropped frames", func() bool { return p.snd.Dropped() == 3 })

	// Oversized messages never reach the owner (ZMQ_MAXMSGSIZE).
	big := rawSocket(t, zctx, zmq.PUSH)
	if err := big.Connect(ep); err != nil {
		t.Fatal(err)
	}
	mustSend(t, big, make([]byte, 2*maxFrameSize))
	wantStatus(t, p.snd, room, Bootstrapping)

	// The room still works with its real receiver...
	ts := []tensor.Tensor{filled(t, tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{1000}}, 7)}
	if err := p.rcv.OpenReceiver(room, ep, specsOf(ts)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.transfer(ctx, room, ts); err != nil {
		t.Fatal(err)
	}
	// ...and a late duplicate descriptor is dropped too.
	mustSend(t, push, valid(room, wireVersion))
	eventually(t, "4 dropped frames", func() bool { return p.snd.Dropped() == 4 })
	wantStatus(t, p.snd, room, Success)
}

func TestHostileStatusFrames(t *testing.T) {
	// A hand-written sender: it reads descriptors and writes status frames.
	f := newFakeRig(t)
	dir, rn, rcv, zctx := f.dir, f.rn, f.rcv, f.zctx
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	specs := []tensor.Spec{
		{Name: "a", DType: tensor.Float32, Shape: []int64{8}},
		{Name: "b", DType: tensor.Uint8, Shape: []int64{100}},
	}
	want := []tensor.Tensor{filled(t, specs[0], 1), filled(t, specs[1], 2)}

	type peer struct {
		d    *phasedv1.Descriptor
		push *zmq.Socket
	}
	open := func(room uint64) peer {
		t.Helper()
		d := f.open(t, room, specs)
		push := rawSocket(t, zctx, zmq.PUSH)
		if err := push.Connect(d.GetStatusEndpoint()); err != nil {
			t.Fatal(err)
		}
		return peer{d, push}
	}
	frame := func(p peer, st Status, edit func(f *phasedv1.StatusFrame)) []byte {
		f := &phasedv1.StatusFrame{Version: wireVersion, Room: p.d.GetRoom(), Generation: p.d.GetGeneration(), Status: st.Proto()}
		if edit != nil {
			edit(f)
		}
		return marshal(t, f)
	}
	// write fills the peer's buffers with want and returns the Success
	// headers a correct sender would report.
	write := func(p peer) []*phasedv1.TensorHeader {
		data, err := mapPeerSegment(DefaultShmDir, p.d.GetSegment(), p.d.GetSegmentSize())
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(data)
		var hs []*phasedv1.TensorHeader
		for i, b := range p.d.GetBuffers() {
			copy(data[b.GetOffset():b.GetOffset()+b.GetLength()], want[i].Data)
			hs = append(hs, &phasedv1.TensorHeader{Name: b.GetName(), Dtype: b.GetDtype(), Shape: b.GetShape(),
				Length: b.GetLength(), Xxh3: tensor.Checksum(want[i].Data)})
		}
		return hs
	}

	t.Run("dropped frames, then a good transfer", func(t *testing.T) {
		p := open(1)
		wantStatus(t, rcv, 1, WaitingForInput)
		before := rcv.Dropped()
		mustSend(t, p.push, frame(p, Transferring, func(f *phasedv1.StatusFrame) { f.Generation++ }))
		mustSend(t, p.push, []byte("garbage"))
		mustSend(t, p.push, frame(p, Transferring, func(f *phasedv1.StatusFrame) { f.Room = 2 }))
		mustSend(t, p.push, frame(p, Transferring, func(f *phasedv1.StatusFrame) { f.Version = 0 }))
		mustSend(t, p.push, frame(p, Success, nil))       // skips Transferring
		mustSend(t, p.push, frame(p, Bootstrapping, nil)) // backwards
		mustSend(t, p.push, frame(p, Transferring, nil))  // good
		mustSend(t, p.push, frame(p, Transferring, nil))  // duplicate
		eventually(t, "7 dropped frames", func() bool { return rcv.Dropped()-before == 7 })
		wantStatus(t, rcv, 1, Transferring)

		hs := write(p)
		mustSend(t, p.push, frame(p, Success, func(f *phasedv1.StatusFrame) { f.Tensors = hs }))
		got, release, err := rcv.Receive(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		if err := sameTensors(got, want); err != nil {
			t.Fatal(err)
		}
		wantStatus(t, rcv, 1, Success)
	})

	failures := []struct {
		name string
		edit func(hs []*phasedv1.TensorHeader)
		want string
	}{
		{"wrong crc", func(hs []*phasedv1.TensorHeader) { hs[1].Xxh3++ },
			`verify: tensor 1 "b": checksum mismatch`},
		{"wrong name", func(hs []*phasedv1.TensorHeader) { hs[0].Name = "c" },
			`verify: tensor 0 "a": the sender wrote c:float32[8], expected a:float32[8]`},
		{"wrong length", func(hs []*phasedv1.TensorHeader) { hs[1].Length = 1 << 40 },
			`verify: tensor 1 "b": the sender wrote 1099511627776 bytes, expected 100`},
		{"missing tensor", func(hs []*phasedv1.TensorHeader) { hs[1] = nil },
			"verify: the sender reported 1 tensors, 2 expected"},
	}
	for i, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			room := uint64(10 + i)
			p := open(room)
			hs := write(p)
			tt.edit(hs)
			if hs[len(hs)-1] == nil {
				hs = hs[:len(hs)-1]
			}
			mustSend(t, p.push, frame(p, Transferring, nil))
			mustSend(t, p.push, frame(p, Success, func(f *phasedv1.StatusFrame) { f.Tensors = hs }))
			_, _, err := rcv.Receive(ctx, room)
			if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Receive = %v, want ErrFailed with %q", err, tt.want)
			}
			st, reason, _ := rcv.Status(room)
			if st != Failed || !strings.Contains(reason, tt.want) {
				t.Fatalf("Status = %s %q, want Failed with %q", st, reason, tt.want)
			}
		})
	}

	t.Run("sender reports failure", func(t *testing.T) {
		p := open(20)
		mustSend(t, p.push, frame(p, Failed, func(f *phasedv1.StatusFrame) { f.Reason = "boom" }))
		_, _, err := rcv.Receive(ctx, 20)
		if want := "transfer: room failed: room 20: sender: boom"; err == nil || err.Error() != want {
			t.Fatalf("Receive = %v, want %q", err, want)
		}
	})

	if err := rcv.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "fake.sock")); err != nil {
		t.Fatal(err)
	}
	assertClean(t, dir, rn)
}

// TestEmptyBuffersOverlapNothing: an empty input takes no bytes, so the
// receiver's layout may give it the offset of the next buffer; a
// descriptor laid out so, with enough buffers that the sort of the
// overlap check is not stable, is accepted whatever the order, and a
// real overlap among them is still refused.
func TestEmptyBuffersOverlapNothing(t *testing.T) {
	var specs []tensor.Spec
	for i := range 40 {
		shape := []int64{int64(16 * (i % 3))} // every third one is empty
		specs = append(specs, tensor.Spec{Name: fmt.Sprintf("t%02d", i), DType: tensor.Float32, Shape: shape})
	}
	bufs, _, err := layout(specs, ctrlSize)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range bufs {
		if b.length == 0 && i+1 < len(bufs) && bufs[i+1].offset != b.offset {
			t.Fatalf("buffer %d: the layout should give an empty buffer the next one's offset", i)
		}
	}
	for range 20 {
		shuffled := slices.Clone(bufs)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if err := checkOverlap(shuffled); err != nil {
			t.Fatalf("a valid layout refused: %v", err)
		}
	}
	bad := slices.Clone(bufs)
	bad[4].offset = bad[5].offset - 4 // t04 (64 bytes) now runs into t05
	if err := checkOverlap(bad); err == nil || !strings.Contains(err.Error(), `buffers "t04" and "t05" overlap`) {
		t.Fatalf("overlap: %v", err)
	}
}

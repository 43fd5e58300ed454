package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/phased/phased/internal/procmaps"
	"github.com/phased/phased/sdk/tensor"
)

// allocFilled returns a tensor from m.Alloc filled as filled fills one.
func allocFilled(t *testing.T, m *Manager, s tensor.Spec, seed byte) tensor.Tensor {
	t.Helper()
	x, err := m.Alloc(s)
	if err != nil {
		t.Fatal(err)
	}
	copy(x.Data, filled(t, s, seed).Data)
	return x
}

// inside reports whether b lies inside m.
func inside(b, m []byte) bool {
	if len(b) == 0 || len(m) == 0 {
		return false
	}
	p, lo := uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&m[0]))
	return p >= lo && p+uintptr(len(b)) <= lo+uintptr(len(m))
}

// TestHandoff sends two outputs from Alloc and an ordinary tensor through
// one shm room: the outputs are lent (the receiver's views lie in the
// sender's segments, mapped read-only on both sides), the other is
// copied, all arrive intact, and once the room is removed and the lease
// released the segments go back to the sender and serve the next Alloc.
func TestHandoff(t *testing.T) {
	p := newPair(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{3*chunkSize + 5}}
	small := tensor.Spec{Name: "context", DType: tensor.Float32, Shape: []int64{16, 64}}
	plain := tensor.Spec{Name: "meta", DType: tensor.Uint8, Shape: []int64{32}}
	want := []tensor.Tensor{allocFilled(t, p.snd, small, 1), allocFilled(t, p.snd, big, 2), filled(t, plain, 3)}
	if err := p.snd.Written(want[0], tensor.Checksum(want[0].Data)); err != nil {
		t.Fatal(err)
	}
	p.open(t, 1, specsOf(want))
	var views []tensor.Tensor
	err := p.hop(ctx, 1, want, func(got []tensor.Tensor) error {
		views = got
		return sameTensors(got, want)
	})
	if err != nil {
		t.Fatal(err)
	}
	p.rcv.mu.Lock()
	own := p.rcv.rooms[1].seg.data
	p.rcv.mu.Unlock()
	for i, lent := range []bool{true, true, false} {
		// A lent tensor is the sender's own memory: the same bytes,
		// mapped a second time by the receiver.
		if got := inside(views[i].Data, own); got == lent {
			t.Errorf("tensor %d %q: inside the receiver's segment: %v, want %v", i, views[i].Name, got, !lent)
		}
	}
	if held, lent, idle := p.snd.outputs.counts(); held != 0 || lent != 2 || idle != 0 {
		t.Errorf("sender's outputs: held (not lent) %d, lent %d, idle %d; want 0, 2, 0", held, lent, idle)
	}
	// Each lent segment is mapped twice: read-write by its sender,
	// read-only by the receiver.
	if got := procmaps.Perms(t, "phased-"+p.sn+"-out-"); got != "r--s r--s rw-s rw-s" {
		t.Errorf("the sender's output segments are mapped %q, want %q", got, "r--s r--s rw-s rw-s")
	}

	// Sender first, then receiver: the segments come back only then.
	p.snd.Free(want[0])
	p.snd.Free(want[1])
	if err := p.snd.Written(want[1], 1); err == nil || !strings.Contains(err.Error(), "freed or sent") {
		t.Errorf("Written of a freed output: %v", err)
	}
	if err := p.snd.Written(want[2], 1); err != nil {
		t.Errorf("Written of ordinary memory: %v, want nil (ignored)", err)
	}
	if err := p.snd.Remove(1); err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.Remove(1); err != nil {
		t.Fatal(err)
	}
	if _, lent, idle := p.snd.outputs.counts(); lent != 0 || idle != 2 {
		t.Errorf("after the room's removal: lent %d, idle %d; want 0, 2", lent, idle)
	}
	again, err := p.snd.Alloc(big)
	if err != nil {
		t.Fatal(err)
	}
	if &again.Data[0] != &want[1].Data[0] {
		t.Error("the next Alloc of the same size did not reuse the segment given back")
	}
	again.Data[0] = 1 // writable again
	p.snd.Free(again)
	assertClean(t, p.dir, p.sn, p.rn)
}

// TestHandoffReceiverCannotWrite: a lent segment is mapped read-only from
// a file opened read-only, so the receiver can neither write it nor make
// its mapping writable, and its lease outlives the room's removal.
func TestHandoffReceiverCannotWrite(t *testing.T) {
	p := newPair(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{2 * chunkSize}}
	out := allocFilled(t, p.snd, s, 9)
	want := filled(t, s, 9)
	p.open(t, 1, []tensor.Spec{s})
	go func() { _ = p.snd.Send(ctx, 1, []tensor.Tensor{out}) }()
	got, release, err := p.rcv.Receive(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	view := got[0].Data
	page := view[:os.Getpagesize()]
	if err := unix.Mprotect(page, unix.PROT_READ|unix.PROT_WRITE); !errors.Is(err, unix.EACCES) {
		t.Errorf("making the receiver's view writable: %v, want EACCES", err)
	}
	func() {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			p := recover()
			if _, fault := p.(interface{ Addr() uintptr }); !fault {
				t.Errorf("writing the receiver's view: recovered %v, want a memory fault", p)
			}
		}()
		view[0] = 0xff
	}()
	if err := p.snd.Remove(1); err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.Remove(1); err != nil {
		t.Fatal(err)
	}
	if string(view) != string(want.Data) {
		t.Error("the lent bytes changed")
	}
	if _, lent, _ := p.snd.outputs.counts(); lent != 1 {
		t.Errorf("lent %d while the receiver holds its lease, want 1", lent)
	}
	release()
	if _, lent, _ := p.snd.outputs.counts(); lent != 0 {
		t.Errorf("lent %d after the lease was released, want 0", lent)
	}
	p.snd.Free(out)
}

// TestHandoffVerify: the receiver trusts the writer's checksum of a lent
// tensor unless Config.VerifyHandoffs, which catches bytes changed after
// the writer hashed them, and then also maps the sender's lent view
// read-only.
func TestHandoffVerify(t *testing.T) {
	for _, verify := range []bool{false, true} {
		dir, sn, rn := shortDir(t), uniqueName(), uniqueName()
		snd := startManager(t, dir, sn, nil, func(c *Config) { c.VerifyHandoffs = verify })
		rcv := startManager(t, dir, rn, nil, func(c *Config) { c.VerifyHandoffs = verify })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{chunkSize + 3}}
		out := allocFilled(t, snd, s, 4)
		if err := snd.Written(out, tensor.Checksum(out.Data)); err != nil {
			t.Fatal(err)
		}
		out.Data[7] ^= 1 // a writer that writes after it hashed
		ep, err := snd.OpenSender(1)
		if err != nil {
			t.Fatal(err)
		}
		if err := rcv.OpenReceiver(1, ep, []tensor.Spec{s}); err != nil {
			t.Fatal(err)
		}
		go func() { _ = snd.Send(ctx, 1, []tensor.Tensor{out}) }()
		_, release, err := rcv.Receive(ctx, 1)
		if verify {
			// The sender with VerifyHandoffs too maps what it lent
			// read-only, so that its own late writes fault.
			if got := procmaps.Perms(t, "phased-"+sn+"-out-"); got != "r--s r--s" {
				t.Errorf("with VerifyHandoffs on both sides, the lent segment is mapped %q, want r--s twice", got)
			}
			if !faults(func() { out.Data[0] = 9 }) {
				t.Error("a write into a lent output did not fault in its writer")
			}
		}
		switch {
		case !verify && err != nil:
			t.Errorf("without VerifyHandoffs: %v, want the tensor", err)
		case verify && (err == nil || !strings.Contains(err.Error(), `verify: tensor 0 "latent": checksum mismatch`)):
			t.Errorf("with VerifyHandoffs: %v, want a checksum mismatch", err)
		}
		if err == nil {
			release()
		}
		for _, m := range []*Manager{snd, rcv} {
			if err := m.Remove(1); err != nil {
				t.Fatal(err)
			}
		}
		if _, lent, _ := snd.outputs.counts(); lent != 0 {
			t.Errorf("verify %v: %d segments still lent after the room's removal", verify, lent)
		}
		snd.Free(out)
		cancel()
	}
}

// faults reports whether f met a memory fault.
func faults(f func()) (fault bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		p := recover()
		_, fault = p.(interface{ Addr() uintptr })
		if p != nil && !fault {
			panic(p)
		}
	}()
	f()
	return false
}

// TestHandoffSenderReleases: Release while a phase still holds an output
// (a Run that did not stop) leaves it mapped for its writer until Free;
// a receiver's mapping of a released sender's segment goes at its next
// room removal.
func TestHandoffSenderReleases(t *testing.T) {
	p := newPair(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{4096}}
	lent := allocFilled(t, p.snd, s, 1)
	p.open(t, 1, []tensor.Spec{s})
	if err := p.hop(ctx, 1, []tensor.Tensor{lent}, nil); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Manager{p.snd, p.rcv} {
		if err := m.Remove(1); err != nil {
			t.Fatal(err)
		}
	}
	p.snd.Free(lent)
	held := allocFilled(t, p.snd, s, 2)
	if err := p.snd.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if faults(func() { held.Data[0] = 3 }) {
		t.Fatal("Release unmapped an output its writer still holds")
	}
	if left, _ := filepath.Glob(filepath.Join(DefaultShmDir, "phased-"+p.sn+"-*")); len(left) > 0 {
		t.Errorf("files left after Release: %v", left)
	}
	p.snd.Free(held)
	if n := len(procmaps.Of(t, "phased-"+p.sn+"-out-")); n != 1 {
		t.Errorf("%d mappings of the released sender's outputs, want 1 (the receiver's, until its next removal)", n)
	}
	// Any room removal on the receiver drops mappings of files gone.
	ep := "ipc://" + filepath.Join(p.dir, "nobody.sock")
	if err := p.rcv.OpenReceiver(2, ep, []tensor.Spec{s}); err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.Remove(2); err != nil {
		t.Fatal(err)
	}
	if got := procmaps.Of(t, "phased-"+p.sn+"-"); len(got) > 0 {
		t.Errorf("still mapped after the sender released and a room went: %v", got)
	}
}

// TestHandoffUntaken: a room removed after its sender lent a segment but
// before any Receive took it gives the segment back; so does one whose
// receiver side was removed before the sender lent (the sender sees the
// receiver's segment unlinked).
func TestHandoffUntaken(t *testing.T) {
	p := newPair(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{4096}}

	out := allocFilled(t, p.snd, s, 1)
	p.open(t, 1, []tensor.Spec{s})
	if err := p.snd.Send(ctx, 1, []tensor.Tensor{out}); err != nil {
		t.Fatal(err)
	}
	p.snd.Free(out)
	if _, lent, _ := p.snd.outputs.counts(); lent != 1 {
		t.Fatalf("lent %d after Send, want 1", lent)
	}
	for _, m := range []*Manager{p.snd, p.rcv} {
		if err := m.Remove(1); err != nil {
			t.Fatal(err)
		}
	}
	if _, lent, _ := p.snd.outputs.counts(); lent != 0 {
		t.Errorf("never received, room removed: lent %d, want 0", lent)
	}

	// The receiver side goes first; the sender lends into its unlinked
	// segment, where nobody will take it.
	out = allocFilled(t, p.snd, s, 2)
	p.open(t, 2, []tensor.Spec{s})
	waitStatus(t, p.snd, 2, WaitingForInput)
	gate, reached := make(chan struct{}), make(chan struct{})
	snd := p.snd
	beforeLend = func(m *Manager) {
		if m == snd {
			close(reached)
			<-gate
		}
	}
	t.Cleanup(func() { beforeLend = nil })
	sent := make(chan error, 1)
	go func() { sent <- p.snd.Send(ctx, 2, []tensor.Tensor{out}) }()
	<-reached // the worker is about to mark the lend
	if err := p.rcv.Remove(2); err != nil {
		t.Fatal(err)
	}
	close(gate)
	<-sent // Success or a peer failure: either way the lend was written
	p.snd.Free(out)
	if _, lent, _ := p.snd.outputs.counts(); lent != 0 {
		// counts reclaims first: only a lend it could not take back shows.
		t.Errorf("a lend into an unlinked segment: lent %d after reclaiming, want 0", lent)
	}
	eventually(t, "the sender to take back a lend into an unlinked segment", func() bool {
		_, lent, _ := p.snd.outputs.counts()
		return lent == 0
	})
	if err := p.snd.Remove(2); err != nil {
		t.Fatal(err)
	}
	assertClean(t, p.dir, p.sn, p.rn)
}

// waitStatus waits until a room reaches st.
func waitStatus(t *testing.T, m *Manager, room uint64, st Status) {
	t.Helper()
	eventually(t, "room "+st.String(), func() bool {
		got, _, err := m.Status(room)
		return err == nil && got == st
	})
}

// TestHostileHandoffs plays a sender that writes bad hand-off entries:
// each fails the room with a reason naming the tensor and what is wrong,
// and takes nothing.
func TestHostileHandoffs(t *testing.T) {
	f := newFakeRig(t)
	rn, rcv := f.rn, f.rcv
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{4096}}
	// A real output segment and lend table of a sender named "evil".
	owner := uniqueName()
	outs := newOutputs(DefaultShmDir, owner, 1<<30, 8, false)
	t.Cleanup(func() { _ = outs.close() })
	x, err := outs.alloc(s)
	if err != nil {
		t.Fatal(err)
	}
	seg := outs.slots[0]
	copy(x.Data, filled(t, s, 5).Data)
	sum := tensor.Checksum(x.Data)
	link := filepath.Join(DefaultShmDir, "phased-"+owner+"-out-7")
	if err := os.Symlink(seg.seg.path, link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })

	cases := []struct {
		name    string
		word    uint64
		off     uint64
		size    uint64
		segment string
		want    string
	}{
		{"not lent", 5 << 32, 0, seg.seg.size, seg.seg.name, "is not a lent one"},
		{"no output name", 1<<32 | lendLent, 0, seg.seg.size, "phased-" + rn + "-1-2", "is not an output segment's name"},
		{"a path", 1<<32 | lendLent, 0, seg.seg.size, "../phased-" + owner + "-out-0", "is not an output segment's name"},
		{"slot too high", 1<<32 | lendLent, 0, seg.seg.size, "phased-" + owner + "-out-4096", "SLOT below 1024"},
		{"past the end", 1<<32 | lendLent, seg.seg.size - 64, seg.seg.size, seg.seg.name, "out of bounds"},
		{"unaligned", 1<<32 | lendLent, 8, seg.seg.size, seg.seg.name, "out of bounds"},
		{"wrong size", 1<<32 | lendLent, 0, seg.seg.size * 2, seg.seg.name, "the hand-off says"},
		{"a symlink", 1<<32 | lendLent, 0, seg.seg.size, filepath.Base(link), "too many levels of symbolic links"},
		{"missing", 1<<32 | lendLent, 0, seg.seg.size, "phased-" + owner + "-out-9", "no such file"},
		{"not the lent word", 1<<32 | lendLent, 0, seg.seg.size, seg.seg.name, "took segment"},
	}
	for i, tc := range cases {
		room := uint64(i + 1)
		d := f.open(t, room, []tensor.Spec{s})
		if d.GetHandoffOffset() == 0 {
			t.Fatal("the receiver offers no hand-off table")
		}
		data := mapSegment(t, d)
		word(outs.table.data, 0).Store(2<<32 | lendLent) // lent, but not with tc.word
		if err := putHandoff(data[d.GetHandoffOffset():], tc.word, tc.off, tc.size, tc.segment); err != nil {
			t.Fatal(err)
		}
		binary.LittleEndian.PutUint64(data[d.GetChecksumOffset():], sum)
		ctrlOf(data).finish(4096)
		_, _, err = rcv.Receive(ctx, room)
		if err == nil || !strings.Contains(err.Error(), `hand-off: tensor 0 "x": `) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Receive: %v, want a failure naming tensor 0 and %q", tc.name, err, tc.want)
		}
		if w := word(outs.table.data, 0).Load(); w != 2<<32|lendLent {
			t.Errorf("%s: the lend word is %#x, want it untouched", tc.name, w)
		}
		if err := rcv.Remove(room); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing holds a reference: once the sender's files are gone, no
	// mapping is left.
	if err := outs.close(); err != nil {
		t.Fatal(err)
	}
	rcv.peers.sweep()
	if n := rcv.peers.mapped(); n != 0 {
		t.Errorf("%d peer segments still mapped after every room failed and the files went", n)
	}
}

// TestChecksumMappedTruncated: hashing a lent segment that its sender
// truncated is an error, not a SIGBUS that ends the receiver.
func TestChecksumMappedTruncated(t *testing.T) {
	path := filepath.Join(DefaultShmDir, "phased-"+uniqueName()+"-out-0")
	seg, err := createSegment(DefaultShmDir, filepath.Base(path), 4*4096)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.destroy()
	if sum, err := checksumMapped(seg.data); err != nil || sum != tensor.Checksum(make([]byte, 4*4096)) {
		t.Fatalf("checksum of the whole segment: %x, %v", sum, err)
	}
	if err := os.Truncate(path, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := checksumMapped(seg.data); err == nil || !strings.Contains(err.Error(), "memory fault reading the lent segment") {
		t.Fatalf("checksum of a truncated segment: %v, want a memory fault", err)
	}
}

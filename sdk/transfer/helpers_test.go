package transfer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	zmq "github.com/pebbe/zmq4"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/proto/phasedv1"
	"github.com/phased/phased/sdk/tensor"
)

var nameSeq atomic.Int64

// uniqueName returns a manager name no other test (or test run) uses.
func uniqueName() string { return fmt.Sprintf("t%d-%d", os.Getpid(), nameSeq.Add(1)) }

// shortDir returns a fresh directory short enough for socket paths.
func shortDir(t testing.TB) string {
	t.Helper()
	// In memory, as the supervisor's run directory: a socket file on a
	// disk file system costs an inode allocation per bind.
	dir, err := os.MkdirTemp(DefaultShmDir, "tr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if len(dir) > 50 {
		t.Fatalf("temp dir %q is too long for socket paths", dir)
	}
	return dir
}

// startManager starts a Manager; tweak, if set, runs before Start, and
// configure, if given, on its Config before New. It is released when the
// test ends.
func startManager(t testing.TB, dir, name string, tweak func(*Manager), configure ...func(*Config)) *Manager {
	t.Helper()
	logger := hclog.NewNullLogger()
	if testing.Verbose() {
		logger = hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Debug})
	}
	cfg := Config{Dir: dir, Name: name, Logger: logger}
	for _, c := range configure {
		c(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(m)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Release(ctx); err != nil {
			t.Errorf("release %s: %v", name, err)
		}
		// Release leaves no segment behind, pooled ones included.
		if segs, _ := filepath.Glob(filepath.Join(DefaultShmDir, "phased-"+name+"-*")); len(segs) > 0 {
			t.Errorf("segments left after Release: %v", segs)
		}
	})
	return m
}

// pair is a sender and a receiver manager sharing one run directory.
type pair struct {
	dir      string
	snd, rcv *Manager
	sn, rn   string
}

func newPair(t testing.TB, tweakSender func(*Manager)) *pair {
	t.Helper()
	p := &pair{dir: shortDir(t), sn: uniqueName(), rn: uniqueName()}
	p.snd = startManager(t, p.dir, p.sn, tweakSender)
	p.rcv = startManager(t, p.dir, p.rn, nil)
	return p
}

// open opens both sides of a shm room, sender first.
func (p *pair) open(t testing.TB, room uint64, specs []tensor.Spec) {
	t.Helper()
	p.openWith(t, sdk.BackendShm, room, specs)
}

// openWith opens both sides of a room of the backend, sender first, and
// returns the sender's endpoint.
func (p *pair) openWith(t testing.TB, backend sdk.Backend, room uint64, specs []tensor.Spec) string {
	t.Helper()
	ep, err := p.snd.OpenSenderWith(room, backend)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.OpenReceiverWith(room, backend, ep, specs); err != nil {
		t.Fatal(err)
	}
	return ep
}

// transfer sends ts over room and checks what the receiver gets.
func (p *pair) transfer(ctx context.Context, room uint64, ts []tensor.Tensor) error {
	return p.hop(ctx, room, ts, func(got []tensor.Tensor) error { return sameTensors(got, ts) })
}

// hop sends ts over room and receives them (Receive verifies every
// checksum); check, if set, looks at what arrived before it is released.
func (p *pair) hop(ctx context.Context, room uint64, ts []tensor.Tensor, check func([]tensor.Tensor) error) error {
	sent := make(chan error, 1)
	go func() { sent <- p.snd.Send(ctx, room, ts) }()
	got, release, err := p.rcv.Receive(ctx, room)
	if err != nil {
		return fmt.Errorf("receive: %w (send: %v)", err, <-sent)
	}
	defer release()
	if err := <-sent; err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if check != nil {
		return check(got)
	}
	return nil
}

func sameTensors(got, want []tensor.Tensor) error {
	if len(got) != len(want) {
		return fmt.Errorf("got %d tensors, want %d", len(got), len(want))
	}
	for i := range want {
		if !got[i].Spec.Equal(want[i].Spec) {
			return fmt.Errorf("tensor %d: spec %s, want %s", i, got[i].Spec, want[i].Spec)
		}
		if !bytes.Equal(got[i].Data, want[i].Data) {
			return fmt.Errorf("tensor %d %q: bytes differ", i, want[i].Name)
		}
	}
	return nil
}

// filled returns a tensor of spec s whose bytes depend on seed.
func filled(t testing.TB, s tensor.Spec, seed byte) tensor.Tensor {
	t.Helper()
	x, err := tensor.New(s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range x.Data {
		x.Data[i] = byte(i*7+i>>9) ^ seed
	}
	return x
}

func specsOf(ts []tensor.Tensor) []tensor.Spec {
	specs := make([]tensor.Spec, len(ts))
	for i, t := range ts {
		specs[i] = t.Spec
	}
	return specs
}

// assertClean checks that no socket file is left in dir and no segment of
// the named managers in the default ShmDir, except idle pooled ones
// (phased-NAME-free-N) and output segments with their lend table
// (phased-NAME-out-N, phased-NAME-lends-0), which Release removes (see
// startManager).
func assertClean(t testing.TB, dir string, names ...string) {
	t.Helper()
	socks, err := filepath.Glob(filepath.Join(dir, "*.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if len(socks) > 0 {
		t.Errorf("socket files left: %v", socks)
	}
	for _, name := range names {
		segs, err := filepath.Glob(filepath.Join(DefaultShmDir, "phased-"+name+"-*"))
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, s := range segs {
			if base := filepath.Base(s); !strings.HasPrefix(base, "phased-"+name+"-free-") &&
				!strings.HasPrefix(base, "phased-"+name+"-out-") && base != lendTableName(name) {
				left = append(left, s)
			}
		}
		if len(left) > 0 {
			t.Errorf("segments left: %v", left)
		}
	}
}

// eventually waits up to 5 s for cond (tests only).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func wantStatus(t testing.TB, m *Manager, room uint64, want Status) {
	t.Helper()
	st, reason, err := m.Status(room)
	if err != nil {
		t.Fatal(err)
	}
	if st != want {
		t.Fatalf("room %d: status %s (%q), want %s", room, st, reason, want)
	}
}

// chunkHooks holds, per Manager, what onChunk installed; afterChunk, set
// once for the test binary, dispatches to it.
var chunkHooks sync.Map // *Manager -> func(room uint64)

func init() {
	afterChunk = func(m *Manager, room uint64) {
		if h, ok := chunkHooks.Load(m); ok {
			h.(func(uint64))(room)
		}
	}
}

// onChunk makes m's transfer worker call hook after each chunk it copies,
// until the test ends.
func onChunk(t testing.TB, m *Manager, hook func(room uint64)) {
	chunkHooks.Store(m, hook)
	t.Cleanup(func() { chunkHooks.Delete(m) })
}

// fakeRig is a receiving Manager and a hand-written sender: a raw PULL
// socket bound where a sender's room socket would be, which reads the
// receiver's descriptors; the test plays the sender's part.
type fakeRig struct {
	dir      string
	rcv      *Manager
	rn       string
	zctx     *zmq.Context
	fake     *zmq.Socket
	senderEP string
}

func newFakeRig(t *testing.T) *fakeRig {
	t.Helper()
	f := &fakeRig{dir: shortDir(t), rn: uniqueName()}
	f.rcv = startManager(t, f.dir, f.rn, nil)
	f.zctx = rawContext(t)
	f.senderEP = "ipc://" + filepath.Join(f.dir, "fake.sock")
	f.fake = rawSocket(t, f.zctx, zmq.PULL)
	if err := f.fake.Bind(f.senderEP); err != nil {
		t.Fatal(err)
	}
	return f
}

// open opens a receiver room of specs towards the fake sender and returns
// the descriptor it sent, checked for its room and version.
func (f *fakeRig) open(t *testing.T, room uint64, specs []tensor.Spec) *phasedv1.Descriptor {
	t.Helper()
	if err := f.rcv.OpenReceiver(room, f.senderEP, specs); err != nil {
		t.Fatal(err)
	}
	b, err := f.fake.RecvBytes(0)
	if err != nil {
		t.Fatal(err)
	}
	d := &phasedv1.Descriptor{}
	if err := proto.Unmarshal(b, d); err != nil || d.GetRoom() != room || d.GetVersion() != wireVersion {
		t.Fatalf("descriptor %v (%v)", d, err)
	}
	return d
}

// mapSegment maps the segment d names, as its sender would, until the
// test ends.
func mapSegment(t *testing.T, d *phasedv1.Descriptor) []byte {
	t.Helper()
	data, err := mapPeerSegment(DefaultShmDir, d.GetSegment(), d.GetSegmentSize())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(data) })
	return data
}

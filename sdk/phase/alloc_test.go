package phase

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/internal/procmaps"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

var (
	lentSpec  = tensor.Spec{Name: "latent", DType: tensor.Float32, Shape: []int64{4, 1024}}
	plainSpec = tensor.Spec{Name: "context", DType: tensor.Uint8, Shape: []int64{100}}
)

// allocator writes one output into sdk.Alloc's memory and one into its
// own.
type allocator struct{ gotPlain chan bool }

func (allocator) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "alloc", Kind: sdk.KindPhase, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (allocator) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) { return nil, nil }

func (a allocator) Run(ctx context.Context, req sdk.Request, _ []tensor.Tensor) (sdk.Output, error) {
	lent, err := sdk.Alloc(ctx, lentSpec)
	if err != nil {
		return sdk.Output{}, err
	}
	for i := range lent.Data {
		lent.Data[i] = byte(i * 3)
	}
	if err := sdk.Written(ctx, lent, tensor.Checksum(lent.Data)); err != nil {
		return sdk.Output{}, err
	}
	plain, err := tensor.New(plainSpec)
	return sdk.Output{Tensors: []tensor.Tensor{plain, lent}}, err
}

// TestRunLendsAllocOutputs: an output a phase writes into sdk.Alloc's
// memory reaches the next phase as a read-only mapping of the instance's
// output segment, not a copy; the Run gives it back to the manager, and
// Release removes the segment.
func TestRunLendsAllocOutputs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, peer := withPeer(t, allocator{}, "l-0")
	for room := uint64(1); room <= 2; room++ {
		ep, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleSender, Request: sdk.Request{ID: "a"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := peer.OpenReceiver(room, ep, []tensor.Spec{lentSpec, plainSpec}); err != nil {
			t.Fatal(err)
		}
		res, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: fmt.Sprint("a", room)}, OutRoom: room})
		if err != nil {
			t.Fatal(err)
		}
		if !res.OutDrained || !res.OutRemoved || res.InRemoved {
			t.Errorf("room %d: the Run's send took the fast path: OutDrained %v, OutRemoved %v, InRemoved %v; want true, true, false",
				room, res.OutDrained, res.OutRemoved, res.InRemoved)
		}
		if rooms := r.mgr.Rooms(); len(rooms) != 0 {
			t.Errorf("room %d: the runtime said it removed its drained side, yet it holds %v", room, rooms)
		}
		got, release, err := peer.Receive(ctx, room)
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range got[0].Data {
			if b != byte(i*3) {
				t.Fatalf("room %d: byte %d of the lent output is %d, want %d", room, i, b, byte(i*3))
			}
		}
		out := "phased-" + transfer.ProcessName("l-0", os.Getpid()) + "-out-"
		if perms := procmaps.Perms(t, out); perms != "r--s rw-s" {
			t.Errorf("room %d: the instance's output segment is mapped %q, want once by it (rw-s) and once by the peer (r--s)", room, perms)
		}
		release()
		if err := r.RemoveRoom(ctx, room); err != nil {
			t.Fatal(err)
		}
		if err := peer.Remove(room); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if segs, _ := filepath.Glob("/dev/shm/phased-" + transfer.ProcessName("l-0", os.Getpid()) + "-*"); len(segs) > 0 {
		t.Errorf("left after Release: %v", segs)
	}
}

// TestAllocWithoutRuntime: outside a runtime's Run (sdk.RunLocal, tests),
// sdk.Alloc gives ordinary zeroed memory and Written does nothing.
func TestAllocWithoutRuntime(t *testing.T) {
	x, err := sdk.Alloc(context.Background(), lentSpec)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := lentSpec.NumBytes(); int64(len(x.Data)) != n || strings.Trim(string(x.Data), "\x00") != "" {
		t.Fatalf("got %d bytes, not all zero; want %d zeros", len(x.Data), n)
	}
	if err := sdk.Written(context.Background(), x, 1); err != nil {
		t.Fatal(err)
	}
}

// withPeer configures a runtime of p as instance id, in a run directory
// in memory, with a transfer manager beside it as its peer; both are
// released when the test ends.
func withPeer(t *testing.T, p sdk.Phase, id string) (*Runtime, *transfer.Manager) {
	return withPeerConfig(t, p, sdk.InstanceConfig{Instance: id})
}

// withPeerConfig is withPeer with the runtime configured by cfg (its
// RunDir made here).
func withPeerConfig(t *testing.T, p sdk.Phase, cfg sdk.InstanceConfig) (*Runtime, *transfer.Manager) {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "alloctest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := New(p, nil)
	cfg.RunDir = dir
	if err := r.Configure(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Release(context.Background()) })
	peer, err := transfer.New(transfer.Config{Dir: dir, Name: transfer.ProcessName("alloc-peer", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	if err := peer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Release(context.Background()) })
	return r, peer
}

// scribbler writes into its input.
type scribbler struct{}

func (scribbler) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "scribbler", Kind: sdk.KindPhase, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (scribbler) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) {
	return []tensor.Spec{lentSpec}, nil
}

func (scribbler) Run(_ context.Context, _ sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	in[0].Data[0] = 1
	return sdk.Output{}, nil
}

// TestRunWritesLentInput: a phase that writes into an input lent to it
// fails its Run with a reason that says inputs are read-only; the
// process goes on, and the sender's bytes are unchanged.
func TestRunWritesLentInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, peer := withPeer(t, scribbler{}, "w-0")
	out, err := peer.Alloc(lentSpec)
	if err != nil {
		t.Fatal(err)
	}
	clear(out.Data)
	ep, err := peer.OpenSender(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: 1, Role: sdk.RoleReceiver, Request: sdk.Request{ID: "w"}, PeerEndpoint: ep}); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() { sent <- peer.Send(ctx, 1, []tensor.Tensor{out}) }()
	_, err = r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "w"}, InRoom: 1})
	if err == nil || !strings.Contains(err.Error(), "the phase panicked") || !strings.Contains(err.Error(), "inputs are read-only") {
		t.Fatalf("Run of a phase that writes its lent input: %v, want a panic that says inputs are read-only", err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if out.Data[0] != 0 {
		t.Error("the sender's output changed")
	}
	peer.Free(out)
}

// sink is a last phase that takes plainSpec and checks its bytes.
type sink struct{}

func (sink) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "sink", Kind: sdk.KindPhase, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (sink) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) {
	return []tensor.Spec{plainSpec}, nil
}

func (sink) Run(_ context.Context, req sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	for i, b := range in[0].Data {
		if b != byte(i+1) {
			return sdk.Output{}, fmt.Errorf("byte %d is %d, want %d", i, b, i+1)
		}
	}
	return sdk.Output{Artifact: &sdk.Artifact{Path: req.ID}}, nil
}

// TestRunRemovesLeftRoom: a Run whose sender has written done and
// removed its side removes its own receiver side before it answers, and
// says so (InRemoved); one whose sender's side is still open leaves it
// to the supervisor's RemoveRoom (invariant 1: sender first).
func TestRunRemovesLeftRoom(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, peer := withPeer(t, sink{}, "s-0")
	x, err := tensor.New(plainSpec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range x.Data {
		x.Data[i] = byte(i + 1)
	}
	for room, senderGone := range map[uint64]bool{1: true, 2: false} {
		ep, err := peer.OpenSender(room)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleReceiver, PeerEndpoint: ep, Request: sdk.Request{ID: "s"}}); err != nil {
			t.Fatal(err)
		}
		if err := peer.Send(ctx, room, []tensor.Tensor{x}); err != nil {
			t.Fatal(err)
		}
		if senderGone {
			if err := peer.Remove(room); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(5 * time.Second); !r.mgr.SenderLeft(room); time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("room %d: the receiver did not see its sender go", room)
				}
			}
		}
		res, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: fmt.Sprint("s", room)}, InRoom: room})
		if err != nil {
			t.Fatal(err)
		}
		if res.InRemoved != senderGone || res.OutRemoved {
			t.Errorf("room %d (sender gone: %v): InRemoved %v, OutRemoved %v", room, senderGone, res.InRemoved, res.OutRemoved)
		}
		if open := len(r.mgr.Rooms()) == 1; open == senderGone {
			t.Errorf("room %d (sender gone: %v): the runtime holds %v", room, senderGone, r.mgr.Rooms())
		}
		if err := peer.Remove(room); err != nil {
			t.Fatal(err)
		}
		if err := r.RemoveRoom(ctx, room); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRunArmsStandbyRoom: the runtime lists the standby feature; a
// receiver side opened standing by, then armed by the request's open,
// gives the Run its inputs; standby on a sender side is refused.
func TestRunArmsStandbyRoom(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, peer := withPeer(t, sink{}, "w-0")
	info, err := r.Info(ctx)
	if err != nil || !info.Has(sdk.FeatureStandbyReceiver) {
		t.Fatalf("Info %+v, %v: want the feature %q", info, err, sdk.FeatureStandbyReceiver)
	}
	if _, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: 9, Role: sdk.RoleSender, Standby: true}); !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), "only a receiver side stands by") {
		t.Errorf("standby on a sender side: %v, want ErrInvalid", err)
	}
	x, err := tensor.New(plainSpec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range x.Data {
		x.Data[i] = byte(i + 1) // as sink checks
	}
	ep, err := peer.OpenSender(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: 1, Role: sdk.RoleReceiver, PeerEndpoint: ep, Standby: true}); err != nil {
		t.Fatal(err)
	}
	if st, _, err := r.mgr.Status(1); err != nil || st != transfer.Bootstrapping {
		t.Fatalf("standing by: %v, %v; want Bootstrapping", st, err)
	}
	req := sdk.Request{ID: "w"}
	if _, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: 1, Role: sdk.RoleReceiver, PeerEndpoint: ep, Request: req}); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() { sent <- peer.Send(ctx, 1, []tensor.Tensor{x}) }()
	if _, err := r.Run(ctx, sdk.RunSpec{Request: req, InRoom: 1}); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := peer.Remove(1); err != nil {
		t.Fatal(err)
	}
	if err := r.RemoveRoom(ctx, 1); err != nil {
		t.Fatal(err)
	}
}

package phasetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/plugintest"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

func (k *kit) checkInfo(t *testing.T, in instance, name string) {
	info, err := in.ctl.Info(k.call(t))
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	plugintest.CheckInfo(t, info, sdk.KindPhase, name)
}

// instances numbers the instances this process configures.
var instances atomic.Uint64

// config is the InstanceConfig of a new instance under test: an instance
// id no other test process uses (its segments are named after it), and a
// run directory of its own.
func (k *kit) config(t *testing.T) sdk.InstanceConfig {
	id := fmt.Sprintf("phasetest-%d-%d", os.Getpid(), instances.Add(1))
	return sdk.InstanceConfig{Instance: id, RunDir: plugintest.RunDir(t), Params: k.c.Params}
}

func (k *kit) checkConfigure(t *testing.T, in instance) {
	ctx := k.call(t)
	// A plugin without Ready (UNIMPLEMENTED, which the client takes as
	// ready) is conforming; one with it refuses it before Configure.
	if err := in.ctl.Ready(ctx); err != nil && !errors.Is(err, sdk.ErrInvalid) {
		t.Errorf("Ready before Configure: %v; want an invalid-argument error", err)
	}
	bad := k.config(t)
	bad.Instance = "../x"
	if err := in.ctl.Configure(ctx, bad); !errors.Is(err, sdk.ErrInvalid) {
		t.Errorf("Configure with instance id %q: %v; want an invalid-argument error", bad.Instance, err)
	}
	cfg := k.config(t)
	if err := in.ctl.Configure(ctx, cfg); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	t.Cleanup(func() { _ = in.ctl.Release(context.Background()) })
	if err := in.ctl.Configure(ctx, cfg); !errors.Is(err, sdk.ErrInvalid) {
		t.Errorf("second Configure: %v; want an invalid-argument error", err)
	}
	if err := in.ctl.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if st, err := in.ctl.Status(ctx); err != nil || len(st.Rooms) != 0 {
		t.Errorf("Status of a new instance: %+v, %v; want no rooms", st, err)
	}
}

// configured configures in, waits until it is ready and releases it when
// the test ends; it returns in with its run directory.
func (k *kit) configured(t *testing.T, in instance) configuredInstance {
	ctx := k.call(t)
	cfg := k.config(t)
	if err := in.ctl.Configure(ctx, cfg); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	t.Cleanup(func() { _ = in.ctl.Release(context.Background()) })
	if err := in.ctl.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	specs, err := k.inputs(t, in)
	if err != nil {
		t.Fatal(err)
	}
	return configuredInstance{instance: in, id: cfg.Instance, runDir: cfg.RunDir, inputs: specs}
}

// configuredInstance is a ready instance, its id and run directory, and
// the inputs it declares for the case's request.
type configuredInstance struct {
	instance
	id     string
	runDir string
	inputs []tensor.Spec
}

// inputs asks the phase, through a receiver room of a reference peer that
// never sends, which inputs it declares: the specs are what its
// descriptor names. A first phase declares none: its receiver room fails
// or names no buffer.
func (k *kit) inputs(t *testing.T, in instance) ([]tensor.Spec, error) {
	f := newFakeSender(t)
	ctx := k.call(t)
	const room = 1 << 40
	if _, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleReceiver, Request: k.request(t), PeerEndpoint: f.endpoint}); err != nil {
		// A first phase may refuse a receiver room.
		t.Logf("a receiver room was refused (%v): the phase is taken to be a first phase, without inputs", err)
		return nil, nil
	}
	defer func() { _ = in.ctl.RemoveRoom(ctx, room) }()
	d, err := f.descriptor(room)
	if err != nil {
		return nil, fmt.Errorf("the receiver room sent no descriptor: %w", err)
	}
	specs := make([]tensor.Spec, len(d.GetBuffers()))
	for i, b := range d.GetBuffers() {
		specs[i] = tensor.Spec{Name: b.GetName(), DType: tensor.DType(b.GetDtype()), Shape: b.GetShape()}
	}
	return specs, nil
}

// request is the case's request with an artifact directory of the test's.
func (k *kit) request(t *testing.T) sdk.Request {
	req := k.c.Request
	req.ArtifactDir = t.TempDir()
	return req
}

func (k *kit) checkRooms(t *testing.T, in configuredInstance) {
	ctx := k.call(t)
	req := k.request(t)
	ep, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 7, Role: sdk.RoleSender, Request: req})
	if err != nil {
		t.Fatalf("OpenRoom(7, sender): %v", err)
	}
	if !strings.HasPrefix(ep, "ipc://"+in.runDir+"/") {
		t.Errorf("sender endpoint %q: want an ipc endpoint in the run directory %s", ep, in.runDir)
	}
	if _, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 7, Role: sdk.RoleSender, Request: req}); err == nil {
		t.Error("OpenRoom(7) twice succeeded")
	}
	if _, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 0, Role: sdk.RoleSender, Request: req}); !errors.Is(err, sdk.ErrInvalid) {
		t.Errorf("OpenRoom(0): %v; want an invalid-argument error (room 0 is reserved)", err)
	}
	if _, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 8, Request: req}); !errors.Is(err, sdk.ErrInvalid) {
		t.Errorf("OpenRoom without a role: %v; want an invalid-argument error", err)
	}
	st, err := in.ctl.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if len(st.Rooms) != 1 || st.Rooms[0].Room != 7 || st.Rooms[0].Role != sdk.RoleSender || st.Rooms[0].Status != sdk.StatusBootstrapping {
		t.Errorf("Status with room 7 open as a sender: %+v; want it alone, Bootstrapping", st.Rooms)
	}
	for _, room := range []uint64{7, 7, 12345} {
		if err := in.ctl.RemoveRoom(ctx, room); err != nil {
			t.Errorf("RemoveRoom(%d): %v", room, err)
		}
	}
	if st, err := in.ctl.Status(ctx); err != nil || len(st.Rooms) != 0 {
		t.Errorf("Status after RemoveRoom: %+v, %v; want no rooms", st, err)
	}
	if socks := socketFiles(in.runDir); len(socks) != 0 {
		t.Errorf("socket files left after RemoveRoom: %q", socks)
	}
}

// checkTransfer runs the case's request through the phase over backend:
// its inputs from a reference peer, its outputs to one (or its artifact),
// while following its progress.
func (k *kit) checkTransfer(t *testing.T, in configuredInstance, backend sdk.Backend) {
	peer := newPeer(t)
	req := k.request(t)
	ctx := k.call(t)
	events := k.follow(t, in)
	spec := sdk.RunSpec{Request: req}
	var sendErr error
	var wg sync.WaitGroup
	if len(in.inputs) > 0 {
		spec.InRoom = 1
		inputs := k.fill(t, in.inputs)
		ep, err := peer.OpenSenderWith(spec.InRoom, backend)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: spec.InRoom, Role: sdk.RoleReceiver, Request: req, PeerEndpoint: ep, Backend: backend}); err != nil {
			t.Fatalf("OpenRoom(%d, receiver, %s): %v", spec.InRoom, backend, err)
		}
		wg.Go(func() { sendErr = peer.Send(ctx, spec.InRoom, inputs) })
	}
	if len(k.c.Next) > 0 {
		spec.OutRoom = 2
		ep, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: spec.OutRoom, Role: sdk.RoleSender, Request: req, Backend: backend})
		if err != nil {
			t.Fatalf("OpenRoom(%d, sender, %s): %v", spec.OutRoom, backend, err)
		}
		if err := peer.OpenReceiverWith(spec.OutRoom, backend, ep, k.c.Next); err != nil {
			t.Fatal(err)
		}
	}
	res, err := in.ctl.Run(ctx, spec)
	wg.Wait()
	if err != nil {
		t.Fatalf("Run(%+v): %v", spec, err)
	}
	if sendErr != nil {
		t.Fatalf("the reference peer's Send: %v", sendErr)
	}
	if spec.OutRoom != 0 {
		var want int64
		for _, sp := range k.c.Next {
			n, _ := sp.NumBytes()
			want += n
		}
		if res.SentBytes != want {
			t.Errorf("Run(%+v) reports %d bytes sent; the receiver's buffers hold %d", spec, res.SentBytes, want)
		}
	}
	k.checkOutputs(t, ctx, peer, spec.OutRoom, res.Artifact)
	for _, side := range []struct {
		room uint64
		rm   func(uint64) error
	}{{spec.InRoom, peer.Remove}, {spec.InRoom, in.rm(ctx)}, {spec.OutRoom, in.rm(ctx)}, {spec.OutRoom, peer.Remove}} {
		if side.room != 0 {
			if err := side.rm(side.room); err != nil {
				t.Errorf("remove room %d: %v", side.room, err)
			}
		}
	}
	events.check(t, in, req.ID, spec, k.c.Settle)
}

// rm removes a room of the instance.
func (in configuredInstance) rm(ctx context.Context) func(uint64) error {
	return func(room uint64) error { return in.ctl.RemoveRoom(ctx, room) }
}

// checkOutputs checks what the phase produced: the tensors the reference
// peer received (their checksums verified by it), or the artifact.
func (k *kit) checkOutputs(t *testing.T, ctx context.Context, peer *transfer.Manager, outRoom uint64, art *sdk.Artifact) {
	if outRoom != 0 {
		got, release, err := peer.Receive(ctx, outRoom)
		if err != nil {
			t.Fatalf("the reference peer's Receive of the outputs: %v", err)
		}
		defer release()
		for i, s := range k.c.Next {
			if !got[i].Spec.Equal(s) {
				t.Errorf("output %d: %s, want %s", i, got[i].Spec, s)
			}
		}
		return
	}
	if art == nil {
		t.Fatal("Run of the last phase returned no artifact")
	}
	b, err := os.ReadFile(art.Path)
	if err != nil {
		t.Fatalf("artifact: %v", err)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != art.SHA256 || int64(len(b)) != art.Size {
		t.Errorf("artifact %s: %d bytes with SHA-256 %s; Run reported %d bytes, %s", art.Path, len(b), got, art.Size, art.SHA256)
	}
}

// fill makes the inputs the reference peer sends.
func (k *kit) fill(t *testing.T, specs []tensor.Spec) []tensor.Tensor {
	if k.c.Fill != nil {
		ts, err := k.c.Fill(specs)
		if err != nil {
			t.Fatalf("Fill: %v", err)
		}
		return ts
	}
	ts := make([]tensor.Tensor, len(specs))
	for i, s := range specs {
		x, err := tensor.New(s)
		if err != nil {
			t.Fatalf("input %s: %v", s, err)
		}
		if f := x.Float32s(); f != nil {
			for j := range f {
				f[j] = float32(j%17)/17 - 0.5
			}
		} else {
			for j := range x.Data {
				x.Data[j] = byte(j % 251)
			}
		}
		ts[i] = x
	}
	return ts
}

// progressLog collects an instance's progress events.
type progressLog struct {
	mu     sync.Mutex
	events []sdk.Progress
	stop   func() error // ends the stream, once; its error
}

// follow opens the instance's progress stream until the test ends.
func (k *kit) follow(t *testing.T, in configuredInstance) *progressLog {
	l := &progressLog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- in.ctl.Progress(ctx, func(p sdk.Progress) {
			l.mu.Lock()
			l.events = append(l.events, p)
			l.mu.Unlock()
		})
	}()
	var once sync.Once
	var err error
	l.stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { _ = l.stop() })
	k.awaitStream(t, in, l)
	return l
}

// awaitStream returns once the progress stream is live, so that it sees
// every event of the Run that follows (a late subscriber gets only the
// latest event of a Run in progress): it runs probes, requests whose
// in room was never opened, which fail at once, until a probe's events
// arrive.
func (k *kit) awaitStream(t *testing.T, in configuredInstance, l *progressLog) {
	deadline := time.Now().Add(k.c.Settle)
	for n := uint64(1); ; n++ {
		probe := sdk.Request{ID: fmt.Sprintf("phasetest-probe-%d", n), Prompt: "probe", Steps: 1, ArtifactDir: t.TempDir()}
		ctx, cancel := context.WithTimeout(context.Background(), k.c.Timeout)
		_, err := in.ctl.Run(ctx, sdk.RunSpec{Request: probe, InRoom: 1<<41 + n})
		cancel()
		if err == nil {
			t.Fatalf("Run of request %s with an in room never opened succeeded", probe.ID)
		}
		if waitFor(100*time.Millisecond, func() bool { return len(l.of(probe.ID)) > 0 }) == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the progress stream shows no event of the Runs that failed at once (%d of them)", n)
		}
	}
}

// of returns the events of request, in order.
func (l *progressLog) of(request string) []sdk.Progress {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []sdk.Progress
	for _, p := range l.events {
		if p.Request == request {
			out = append(out, p)
		}
	}
	return out
}

// check waits for the Run's finished event and checks the stages the
// stream showed for it, every event with the Run's rooms: waiting first,
// computing, sending when it has an out room, finished last. When the
// instance reports progress events dropped (a stream may drop the oldest
// of a reader too slow), only the order is checked, and finished last.
func (l *progressLog) check(t *testing.T, in configuredInstance, request string, spec sdk.RunSpec, settle time.Duration) {
	var got []sdk.Progress
	_ = waitFor(settle, func() bool {
		got = l.of(request)
		return len(got) > 0 && got[len(got)-1].Stage == sdk.StageFinished
	})
	if err := l.stop(); err != nil {
		t.Errorf("Progress: %v", err)
	}
	order := map[string]int{sdk.StageWaiting: 1, sdk.StageComputing: 2, sdk.StageSending: 3, sdk.StageFinished: 4}
	stages := make([]string, len(got))
	inOrder := true
	for i, p := range got {
		stages[i] = p.Stage
		inOrder = inOrder && order[p.Stage] > 0 && (i == 0 || order[p.Stage] >= order[got[i-1].Stage])
		if p.InRoom != spec.InRoom || p.OutRoom != spec.OutRoom {
			t.Errorf("progress event %+v: rooms %d, %d; want the Run's, %d and %d", p, p.InRoom, p.OutRoom, spec.InRoom, spec.OutRoom)
		}
	}
	ok := inOrder && len(got) > 0 && stages[len(stages)-1] == sdk.StageFinished
	if st, err := in.ctl.Status(context.Background()); err == nil && st.DroppedProgress == 0 {
		ok = ok && stages[0] == sdk.StageWaiting && slices.Contains(stages, sdk.StageComputing) &&
			slices.Contains(stages, sdk.StageSending) == (spec.OutRoom != 0)
	}
	if !ok {
		t.Errorf("progress of the Run: %q; want waiting, computing..., sending (with an out room), finished", stages)
	}
}

func (k *kit) checkRelease(t *testing.T, in configuredInstance) {
	ctx := k.call(t)
	// A room of each kind open at release: release removes them.
	if _, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 3, Role: sdk.RoleSender, Request: k.request(t)}); err != nil {
		t.Fatal(err)
	}
	if len(in.inputs) > 0 {
		peer := newPeer(t)
		ep, err := peer.OpenSender(4)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := in.ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 4, Role: sdk.RoleReceiver, Request: k.request(t), PeerEndpoint: ep}); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.ctl.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := in.ctl.Release(ctx); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if socks := socketFiles(in.runDir); len(socks) != 0 {
		t.Errorf("socket files left in the run directory after Release: %q", socks)
	}
	if segs := segments(in.id); len(segs) != 0 {
		t.Errorf("shared-memory segments left after Release: %q", segs)
	}
	if in.stop == nil {
		return
	}
	in.stop()
	if in.killed != nil && in.killed() {
		t.Error("the plugin did not exit within 2 s of the controller's Shutdown and was killed: serve plugin.GRPCController, and on Shutdown stop serving and exit 0 (docs/protocol.md 9.3)")
	}
	if err := processGroupGone(in.pid, k.c.Settle); err != nil {
		t.Error(err)
	}
}

// socketFiles lists the unix socket files under dir.
func socketFiles(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type()&os.ModeSocket != 0 {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// segments lists the shared-memory segments of instance id, made by any
// process (a plugin started through a script that does not exec has
// another pid than the one the kit started).
func segments(id string) []string {
	entries, _ := os.ReadDir(transfer.DefaultShmDir)
	var out []string
	for _, e := range entries {
		owner, ok := transfer.SegmentOwner(e.Name())
		if inst, _, ok2 := transfer.SplitProcessName(owner); ok && ok2 && inst == id {
			out = append(out, e.Name())
		}
	}
	return out
}

// processGroupGone waits until no process of the process group pgid is
// left.
func processGroupGone(pgid int, settle time.Duration) error {
	if pgid <= 1 {
		return fmt.Errorf("no pid for the plugin process")
	}
	if waitFor(settle, func() bool { return syscall.Kill(-pgid, 0) == syscall.ESRCH }) != nil {
		return fmt.Errorf("processes of the plugin's process group %d are left %s after its graceful shutdown (docs/protocol.md §9.3: a plugin stops what it started)", pgid, settle)
	}
	return nil
}

// Package plugins_test drives the three built-in phase plugins through the
// real gRPC layer in memory (sdk/plugintest), each with its own
// transfer manager over real ipc sockets and shared memory, the way the
// supervisor drives them.
package plugins_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/phased/phased/plugins/decoder"
	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phasetest"
	"github.com/phased/phased/sdk/plugintest"
	"github.com/phased/phased/sdk/transfer"
)

func TestPipelineOverGRPC(t *testing.T) {
	ctx := context.Background()
	runDir := plugintest.RunDir(t)
	phases := []struct {
		name string
		ctl  sdk.PhaseControl
	}{
		{encoder.Name, phasetest.Start(t, encoder.New())},
		{transformer.Name, phasetest.Start(t, transformer.New())},
		{decoder.Name, phasetest.Start(t, decoder.New())},
	}
	params := map[string]string{"frames": "4", "height": "16", "width": "20"}
	for _, ph := range phases {
		info, err := ph.ctl.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Name != ph.name || info.Kind != sdk.KindPhase || !info.Speaks(sdk.PhaseAPIVersion) {
			t.Fatalf("%s: info %+v", ph.name, info)
		}
		dir := filepath.Join(runDir, ph.name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := ph.ctl.Configure(ctx, sdk.InstanceConfig{Instance: ph.name + "-0", RunDir: dir, Params: params}); err != nil {
			t.Fatal(err)
		}
	}
	mp, err := model.ParseParams(params)
	if err != nil {
		t.Fatal(err)
	}
	artifacts := t.TempDir()

	// Several requests at once, with rooms opened upstream first.
	var wg sync.WaitGroup
	nextRoom := uint64(0)
	for i := range 4 {
		req := sdk.Request{ID: "g" + string(rune('a'+i)), Prompt: "over grpc", Seed: int64(i), Steps: 3, ArtifactDir: artifacts}
		rooms := []uint64{nextRoom + 1, nextRoom + 2}
		nextRoom += 2
		for h, room := range rooms {
			ep, err := phases[h].ctl.OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleSender, Request: req})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(ep, "ipc://"+runDir) {
				t.Fatalf("sender endpoint %q is not an ipc endpoint in the run dir", ep)
			}
			if _, err := phases[h+1].ctl.OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleReceiver, Request: req, PeerEndpoint: ep}); err != nil {
				t.Fatal(err)
			}
		}
		results := make([]sdk.RunResult, 3)
		errs := make([]error, 3)
		for k, ph := range phases {
			spec := sdk.RunSpec{Request: req}
			if k > 0 {
				spec.InRoom = rooms[k-1]
			}
			if k < 2 {
				spec.OutRoom = rooms[k]
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[k], errs[k] = ph.ctl.Run(ctx, spec)
			}()
		}
		wg.Wait()
		for k, err := range errs {
			if err != nil {
				t.Fatalf("request %s: phase %s: %v", req.ID, phases[k].name, err)
			}
		}
		if results[0].Artifact != nil || results[1].Artifact != nil || results[2].Artifact == nil {
			t.Fatalf("results %+v: want one artifact, from the decoder", results)
		}
		got, err := os.ReadFile(results[2].Artifact.Path)
		if err != nil {
			t.Fatal(err)
		}
		want, err := model.Reference(ctx, mp, req.Prompt, req.Seed, req.Steps)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("request %s: artifact differs from the reference", req.ID)
		}
		for h, room := range rooms {
			st, err := phases[h+1].ctl.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// A receiver whose sender had closed its side removed its
			// own at the end of its Run, and said so; else the room
			// waits, verified, for the caller's RemoveRoom.
			if results[h+1].InRemoved {
				if _, open := roomOf(st, room); open {
					t.Fatalf("receiver status %+v: room %d is open, yet its Run said it removed it", st, room)
				}
			} else if !hasRoom(st, room, transfer.Success) {
				t.Fatalf("receiver status %+v: room %d is not Success", st, room)
			}
			for _, ctl := range []sdk.PhaseControl{phases[h].ctl, phases[h+1].ctl} {
				if err := ctl.RemoveRoom(ctx, room); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, ph := range phases {
		st, err := ph.ctl.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Rooms) != 0 {
			t.Fatalf("%s: rooms %+v still open after remove", ph.name, st.Rooms)
		}
		if err := ph.ctl.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := ph.ctl.Release(ctx); err != nil {
			t.Fatalf("second release: %v", err)
		}
	}
	socks, _ := filepath.Glob(filepath.Join(runDir, "*", "*.sock"))
	if len(socks) != 0 {
		t.Fatalf("socket files left after release: %v", socks)
	}
}

func hasRoom(st sdk.InstanceStatus, room uint64, s transfer.Status) bool {
	r, ok := roomOf(st, room)
	return ok && r.Status == s
}

// roomOf returns room's entry in st, if it has one.
func roomOf(st sdk.InstanceStatus, room uint64) (sdk.RoomInfo, bool) {
	i := slices.IndexFunc(st.Rooms, func(r sdk.RoomInfo) bool { return r.Room == room })
	if i < 0 {
		return sdk.RoomInfo{}, false
	}
	return st.Rooms[i], true
}

// TestConfigureErrors checks that a bad call reaches the supervisor side as
// a clear error through gRPC.
func TestConfigureErrors(t *testing.T) {
	ctx := context.Background()
	ctl := phasetest.Start(t, transformer.New())
	tests := []struct {
		cfg  sdk.InstanceConfig
		want string
	}{
		{sdk.InstanceConfig{Instance: "../evil", RunDir: t.TempDir()}, `instance id "../evil" must match`},
		{sdk.InstanceConfig{Instance: "t-0", RunDir: t.TempDir(), Params: map[string]string{"frames": "many"}}, "frames"},
	}
	for _, tt := range tests {
		err := ctl.Configure(ctx, tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Configure(%+v): %v, want an error containing %q", tt.cfg, err, tt.want)
		}
	}
	if _, err := ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 1, Role: sdk.RoleSender}); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Errorf("OpenRoom before Configure: %v", err)
	}
	if err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "t-0", RunDir: plugintest.RunDir(t)}); err != nil {
		t.Fatal(err)
	}
	defer ctl.Release(ctx)
	_, err := ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 1, Role: sdk.RoleSender, Backend: "rdma"})
	if err == nil || !strings.Contains(err.Error(), `room 1: unknown transfer backend "rdma" (known: shm, zmq, cuda)`) {
		t.Errorf("OpenRoom with an unknown backend: %v", err)
	}
}

// TestProgressOverGRPC: the supervisor's Progress stream on a transformer
// sees a request go waiting, computing (0 of 1, then each denoising step),
// sending and finished, in order, while the pipeline's artifact stays the
// reference's, byte for byte.
func TestProgressOverGRPC(t *testing.T) {
	ctx := context.Background()
	runDir := plugintest.RunDir(t)
	params := map[string]string{"frames": "2", "height": "8", "width": "8"}
	ctls := []sdk.PhaseControl{phasetest.Start(t, encoder.New()), phasetest.Start(t, transformer.New()), phasetest.Start(t, decoder.New())}
	for i, ctl := range ctls {
		dir := filepath.Join(runDir, string(rune('a'+i)))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "p-" + string(rune('a'+i)), RunDir: dir, Params: params}); err != nil {
			t.Fatal(err)
		}
		if err := ctl.Ready(ctx); err != nil {
			t.Fatalf("Ready of a phase without Loader: %v", err)
		}
		defer ctl.Release(ctx)
	}
	const steps = 3
	req := sdk.Request{ID: "p1", Prompt: "progress", Seed: 5, Steps: steps, ArtifactDir: t.TempDir()}
	for h, room := range []uint64{1, 2} {
		ep, err := ctls[h].OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleSender, Request: req})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ctls[h+1].OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleReceiver, Request: req, PeerEndpoint: ep}); err != nil {
			t.Fatal(err)
		}
	}
	specs := []sdk.RunSpec{{Request: req, OutRoom: 1}, {Request: req, InRoom: 1, OutRoom: 2}, {Request: req, InRoom: 2}}
	results := make([]chan error, 3)
	var art *sdk.Artifact
	run := func(k int) {
		results[k] = make(chan error, 1)
		go func() {
			a, err := ctls[k].Run(ctx, specs[k])
			if k == 2 {
				art = a.Artifact
			}
			results[k] <- err
		}()
	}

	// The transformer waits for its inputs; the stream, opened now,
	// starts with its waiting event, live or from the snapshot.
	run(1)
	pctx, stop := context.WithCancel(ctx)
	events := make(chan sdk.Progress, 64)
	streamErr := make(chan error, 1)
	go func() { streamErr <- ctls[1].Progress(pctx, func(p sdk.Progress) { events <- p }) }()
	var got []sdk.Progress
	got = append(got, <-events)
	run(0)
	run(2)
	for got[len(got)-1].Stage != sdk.StageFinished {
		got = append(got, <-events)
	}
	stop()
	if err := <-streamErr; err != nil {
		t.Fatalf("Progress when its ctx ended: %v", err)
	}
	// The transformer's Run: in room 1, out room 2.
	ev := func(stage string, done, total int) sdk.Progress {
		return sdk.Progress{Request: "p1", Stage: stage, Done: done, Total: total, InRoom: 1, OutRoom: 2}
	}
	want := []sdk.Progress{ev(sdk.StageWaiting, 0, 0), ev(sdk.StageComputing, 0, 1)}
	for i := 1; i <= steps; i++ {
		want = append(want, ev(sdk.StageComputing, i, steps))
	}
	want = append(want, ev(sdk.StageSending, 0, 0), ev(sdk.StageFinished, 0, 0))
	if !slices.Equal(got, want) {
		t.Fatalf("events\n%v\nwant\n%v", got, want)
	}
	for k, res := range results {
		if err := <-res; err != nil {
			t.Fatalf("phase %d: %v", k, err)
		}
	}
	mp, err := model.ParseParams(params)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(art.Path)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := model.Reference(ctx, mp, req.Prompt, req.Seed, req.Steps)
	if err != nil || !bytes.Equal(b, ref) {
		t.Fatalf("artifact differs from the reference (%v)", err)
	}
	if st, err := ctls[1].Status(ctx); err != nil || st.DroppedProgress != 0 {
		t.Fatalf("status %+v, %v: want no progress event dropped", st, err)
	}
}

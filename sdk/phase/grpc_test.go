package phase_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phasetest"
	"github.com/phased/phased/sdk/plugintest"
	"github.com/phased/phased/sdk/tensor"
)

// source is a first phase that makes a tensor "x" of two float32s, or
// fails with fail ("panic" panics).
type source struct{ fail error }

func (source) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "source", Kind: sdk.KindPhase, Version: "1", APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (source) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) { return nil, nil }

func (s source) Run(context.Context, sdk.Request, []tensor.Tensor) (sdk.Output, error) {
	switch {
	case s.fail != nil && s.fail.Error() == "panic":
		panic("index out of range [3] with length 3")
	case s.fail != nil:
		return sdk.Output{}, s.fail
	}
	x, err := tensor.FromFloat32("x", []int64{2}, []float32{1, 2})
	return sdk.Output{Tensors: []tensor.Tensor{x}}, err
}

// slowLoad is a source whose Load returns what the test sends.
type slowLoad struct {
	source
	result chan error
}

func (s slowLoad) Load(ctx context.Context) error {
	select {
	case err := <-s.result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestReadyOverGRPC: Configure returns while the phase loads, requests are
// refused until then, and Ready carries the loading's error.
func TestReadyOverGRPC(t *testing.T) {
	ctx := context.Background()
	ph := slowLoad{source: source{}, result: make(chan error, 1)}
	ctl := phasetest.Start(t, ph)
	if err := ctl.Ready(ctx); err == nil || err.Error() != "invalid argument: instance is not configured" {
		t.Fatalf("Ready before Configure: %v", err)
	}
	if err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "s-0", RunDir: plugintest.RunDir(t)}); err != nil {
		t.Fatal(err)
	}
	defer ctl.Release(ctx)
	if _, err := ctl.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "r"}}); err == nil || err.Error() != "instance s-0 is still loading; call Ready first" {
		t.Fatalf("Run while loading: %v", err)
	}
	ph.result <- errors.New("weights missing at /w")
	for range 2 {
		if err := ctl.Ready(ctx); err == nil || err.Error() != "loading: weights missing at /w" {
			t.Fatalf("Ready after a failed load: %v", err)
		}
	}
}

// TestProgressEndsAtRelease: an open Progress call returns nil when the
// instance is released.
func TestProgressEndsAtRelease(t *testing.T) {
	ctx := context.Background()
	ctl := phasetest.Start(t, source{})
	if err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "s-0", RunDir: plugintest.RunDir(t)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctl.Progress(ctx, func(sdk.Progress) {}) }()
	if err := ctl.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// Release either ended the open stream or came before it: then the
	// stream is refused. Both leave Progress returning.
	if err := <-done; err != nil && err.Error() != "transfer: manager released" {
		t.Fatalf("Progress across Release: %v", err)
	}
}

// TestErrorsCrossGRPC: a phase's error reaches the supervisor side with its
// text intact, and the runtime refuses calls out of order.
func TestErrorsCrossGRPC(t *testing.T) {
	ctl := phasetest.Start(t, source{fail: errors.New("model weights missing at /w")})
	ctx := context.Background()
	if _, err := ctl.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "r"}}); err == nil || err.Error() != "invalid argument: instance is not configured" {
		t.Fatalf("Run before Configure: %v", err)
	}
	dir := plugintest.RunDir(t)
	if err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "scale-0", RunDir: dir}); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "scale-0", RunDir: dir}); err == nil || !strings.Contains(err.Error(), "already configured") {
		t.Fatalf("second Configure: %v", err)
	}
	_, err := ctl.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "r"}})
	var re *sdk.RemoteError
	if !errors.As(err, &re) || re.Msg != "model weights missing at /w" {
		t.Fatalf("Run error %#v, want the phase's text as a RemoteError", err)
	}
	// A panicking phase fails the request, not the process.
	pctl := phasetest.Start(t, source{fail: errors.New("panic")})
	if err := pctl.Configure(ctx, sdk.InstanceConfig{Instance: "p-0", RunDir: plugintest.RunDir(t)}); err != nil {
		t.Fatal(err)
	}
	_, err = pctl.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "r"}})
	if err == nil || err.Error() != "the phase panicked: index out of range [3] with length 3" {
		t.Fatalf("Run of a panicking phase: %v", err)
	}
	if err := pctl.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 0}); err == nil || !strings.Contains(err.Error(), "room id 0 is reserved") {
		t.Fatalf("OpenRoom(0): %v", err)
	}
	if err := ctl.RemoveRoom(ctx, 12345); err != nil {
		t.Fatalf("RemoveRoom of an unknown room: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := ctl.Status(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Status with a cancelled context: %v", err)
	}
	if err := ctl.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Release(ctx); err != nil {
		t.Fatalf("second Release: %v", err)
	}
}

// TestConfigureDevice: the device travels over gRPC; "cuda" in a build
// without -tags cuda fails Configure with what to do, an unknown one with
// the choices, and a cuda room on a cpu instance says why it cannot open.
func TestConfigureDevice(t *testing.T) {
	ctx := context.Background()
	ctl := phasetest.Start(t, source{})
	err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "d-0", RunDir: plugintest.RunDir(t), Device: "tpu"})
	if err == nil || !strings.Contains(err.Error(), `device "tpu": want "cpu" or "cuda"`) {
		t.Fatalf("Configure with device tpu: %v", err)
	}
	err = ctl.Configure(ctx, sdk.InstanceConfig{Instance: "d-0", RunDir: plugintest.RunDir(t), Device: sdk.DeviceCUDA})
	if err == nil {
		t.Skip("built with -tags cuda on a GPU host")
	}
	if !strings.Contains(err.Error(), "transfer: start: cuda device 0: cuda: phased was built without -tags cuda; rebuild with `make cuda`") {
		t.Fatalf("Configure with device cuda: %v", err)
	}
	if err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "d-0", RunDir: plugintest.RunDir(t), Device: sdk.DeviceCPU}); err != nil {
		t.Fatal(err)
	}
	_, err = ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 1, Role: sdk.RoleSender, Backend: sdk.BackendCUDA})
	if err == nil || !strings.Contains(err.Error(), "a cuda room needs a GPU") {
		t.Fatalf("OpenRoom(cuda) on a cpu instance: %v", err)
	}
	if err := ctl.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

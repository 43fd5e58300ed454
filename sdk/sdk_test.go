package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/plugintest"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// scale is a toy phase: the first one makes a tensor "x" of n float32s, the
// next ones multiply it by k, and the last one writes it to a file.
type scale struct {
	first, last bool
	k           float32
	n           int64
	fail        error
}

func (s scale) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "scale", Kind: sdk.KindPhase, Version: "1", APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (s scale) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) {
	if s.first {
		return nil, nil
	}
	return []tensor.Spec{{Name: "x", DType: tensor.Float32, Shape: []int64{s.n}}}, nil
}

func (s scale) Run(_ context.Context, req sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	if s.fail != nil {
		if s.fail.Error() == "panic" {
			panic("index out of range [3] with length 3")
		}
		return sdk.Output{}, s.fail
	}
	v := make([]float32, s.n)
	for i := range v {
		v[i] = float32(i + 1)
	}
	if !s.first {
		for i, x := range in[0].Float32s() {
			v[i] = x * s.k
		}
	}
	if s.last {
		path := filepath.Join(req.ArtifactDir, req.ID+".txt")
		if err := os.WriteFile(path, []byte(fmt.Sprint(v)), 0o644); err != nil {
			return sdk.Output{}, err
		}
		return sdk.Output{Artifact: &sdk.Artifact{Path: path, MediaType: "text/plain"}}, nil
	}
	x, err := tensor.FromFloat32("x", []int64{s.n}, v)
	extra, _ := tensor.FromFloat32("unused", []int64{1}, []float32{9})
	return sdk.Output{Tensors: []tensor.Tensor{extra, x}}, err
}

func ExampleRunLocal() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	req := sdk.Request{ID: "r1", ArtifactDir: dir}
	art, err := sdk.RunLocal(context.Background(), req,
		scale{first: true, n: 3}, scale{k: 2, n: 3}, scale{k: 10, n: 3, last: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	b, _ := os.ReadFile(art.Path)
	fmt.Println(string(b))
	// Output: [20 40 60]
}

func TestRunLocalErrors(t *testing.T) {
	ctx := context.Background()
	req := sdk.Request{ID: "r", ArtifactDir: t.TempDir()}
	boom := errors.New("boom")
	tests := []struct {
		name   string
		phases []sdk.Phase
		want   string
	}{
		{"no phases", nil, "no phases"},
		{"shape mismatch", []sdk.Phase{scale{first: true, n: 3}, scale{n: 4, last: true}}, "phase 1: input x:float32[4]: the previous phase produced x:float32[3]"},
		{"phase fails", []sdk.Phase{scale{first: true, n: 3}, scale{n: 3, fail: boom}}, "phase 1: boom"},
		{"no artifact", []sdk.Phase{scale{first: true, n: 3}, scale{n: 3}}, "the last phase returned no artifact"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := sdk.RunLocal(ctx, req, tt.phases...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestInfoSpeaks(t *testing.T) {
	info := sdk.Info{APIVersions: []int{1, 3}}
	for v, want := range map[int]bool{1: true, 2: false, 3: true} {
		if info.Speaks(v) != want {
			t.Errorf("Speaks(%d) = %v", v, !want)
		}
	}
}

// TestErrorsCrossGRPC: a phase's error reaches the supervisor side with its
// text intact, and the runtime refuses calls out of order.
func TestErrorsCrossGRPC(t *testing.T) {
	ctl := plugintest.Phase(t, scale{first: true, n: 2, fail: errors.New("model weights missing at /w")})
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
	pctl := plugintest.Phase(t, scale{first: true, n: 2, fail: errors.New("panic")})
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
	ctl := plugintest.Phase(t, scale{first: true, n: 2})
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
	_, err = ctl.OpenRoom(ctx, sdk.RoomSpec{Room: 1, Role: transfer.Sender, Backend: sdk.BackendCUDA})
	if err == nil || !strings.Contains(err.Error(), "a cuda room needs a GPU") {
		t.Fatalf("OpenRoom(cuda) on a cpu instance: %v", err)
	}
	if err := ctl.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

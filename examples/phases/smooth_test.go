package smooth

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phasetest"
	"github.com/phased/phased/sdk/tensor"
)

// params are small sizes: 2 channels, 3 frames of 2×2.
var params = map[string]string{"channels": "2", "frames": "3", "height": "2", "width": "2", "strength": "0.5"}

var latent = tensor.Spec{Name: "latent", DType: tensor.Float32, Shape: []int64{2, 3, 2, 2}}

// conformance is the kit's case: the latent comes from the transformer
// and goes, smoothed, to the decoder.
var conformance = phasetest.Case{
	Params:  params,
	Request: sdk.Request{ID: "s1", Prompt: "a fox", Seed: 1, Steps: 1},
	Next:    []tensor.Spec{latent},
}

// The conformance kit, in memory, as every phase author runs it.
func TestConformance(t *testing.T) {
	phasetest.Run(t, func() sdk.Phase { return New() }, conformance)
}

// The conformance kit against the built binary, started as the supervisor
// starts it.
func TestBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "phased-phase-smooth")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/phased-phase-smooth").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	phasetest.RunBinary(t, bin, conformance)
}

func TestSmooths(t *testing.T) {
	p := New()
	if err := p.Configure(context.Background(), sdk.Config{Params: params}); err != nil {
		t.Fatal(err)
	}
	// Channel 0: frames 0, 4, 8 everywhere; channel 1: 1, 1, 1.
	v := []float32{0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}
	x, err := tensor.FromFloat32("latent", latent.Shape, v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Run(context.Background(), sdk.Request{}, []tensor.Tensor{x})
	if err != nil {
		t.Fatal(err)
	}
	// Frame 0: 0.5·0 + 0.25·(0+4) = 1; frame 1: 0.5·4 + 0.25·(0+8) = 4;
	// frame 2: 0.5·8 + 0.25·(4+8) = 7; a constant channel stays as it is.
	want := []float32{1, 1, 1, 1, 4, 4, 4, 4, 7, 7, 7, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}
	got := out.Tensors[0]
	if !got.Spec.Equal(latent) || !slices.Equal(got.Float32s(), want) {
		t.Fatalf("smoothed %s %v, want %v", got.Spec, got.Float32s(), want)
	}
	if !slices.Equal(x.Float32s(), v) {
		t.Fatal("the input was changed")
	}
	// Strength 0 passes the latent on unchanged, bit for bit.
	p.strength = 0
	out, _ = p.Run(context.Background(), sdk.Request{}, []tensor.Tensor{x})
	if !slices.Equal(out.Tensors[0].Float32s(), v) {
		t.Fatalf("strength 0: %v", out.Tensors[0].Float32s())
	}
}

func TestConfigureErrors(t *testing.T) {
	for key, v := range map[string]string{"frames": "0", "height": "2.5", "width": "x", "strength": "1.5", "channels": "-1"} {
		err := New().Configure(context.Background(), sdk.Config{Params: map[string]string{key: v}})
		if err == nil || !strings.Contains(err.Error(), "smooth: param "+key+" = \""+v+"\"") {
			t.Errorf("%s = %q: %v", key, v, err)
		}
	}
	// Other phases' params are not its concern.
	if err := New().Configure(context.Background(), sdk.Config{Params: map[string]string{"scale": "4", "delay": "x"}}); err != nil {
		t.Errorf("other params: %v", err)
	}
}

package transformer_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

func TestInfoAndInputs(t *testing.T) {
	tr := transformer.New()
	info, err := tr.Info(context.Background())
	if err != nil || info.Name != transformer.Name || info.Kind != sdk.KindPhase || info.Version != "0.1.0" || !slices.Equal(info.APIVersions, []int{sdk.PhaseAPIVersion}) {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	if err := tr.Configure(context.Background(), sdk.Config{Params: map[string]string{"frames": "3"}}); err != nil {
		t.Fatal(err)
	}
	in, err := tr.Inputs(context.Background(), sdk.Request{ID: "r"})
	if err != nil {
		t.Fatal(err)
	}
	p := tr.Params()
	if len(in) != 2 || !in[0].Equal(model.ContextSpec(p)) || !in[1].Equal(model.LatentSpec(p)) || in[1].Shape[1] != 3 {
		t.Fatalf("Inputs = %v", in)
	}
}

func TestConfigureErrors(t *testing.T) {
	tests := []struct {
		params  map[string]string
		wantErr string
	}{
		{map[string]string{"steps": "3"}, `transformer: params: steps = "3": unknown param; the known params are`},
		{map[string]string{"height": "-4"}, `transformer: params: height = "-4": must be a positive integer`},
	}
	for _, tt := range tests {
		err := transformer.New().Configure(context.Background(), sdk.Config{Params: tt.params})
		if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
			t.Errorf("Configure(%v) = %v, want %q", tt.params, err, tt.wantErr)
		}
	}
}

// encode runs the encoder phase with params.
func encode(t *testing.T, params map[string]string, req sdk.Request) []tensor.Tensor {
	t.Helper()
	e := encoder.New()
	if err := e.Configure(context.Background(), sdk.Config{Params: params}); err != nil {
		t.Fatal(err)
	}
	out, err := e.Run(context.Background(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out.Tensors
}

func TestRunMatchesModelAndKeepsInputs(t *testing.T) {
	req := sdk.Request{ID: "r", Prompt: "waves", Seed: 5, Steps: 7}
	in := encode(t, nil, req)
	before := [][]byte{bytes.Clone(in[0].Data), bytes.Clone(in[1].Data)}

	out, err := transformer.New().Run(context.Background(), req, in)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if !bytes.Equal(in[i].Data, before[i]) {
			t.Fatalf("Run modified input %d (%s)", i, in[i].Name)
		}
	}
	if len(out.Tensors) != 2 || out.Artifact != nil || !out.Tensors[1].Spec.Equal(model.LatentSpec(model.DefaultParams())) {
		t.Fatalf("output %+v, want the context and a latent", out)
	}
	if !out.Tensors[0].Spec.Equal(in[0].Spec) || !bytes.Equal(out.Tensors[0].Data, in[0].Data) {
		t.Fatal("the context is not passed on as it came")
	}
	if &out.Tensors[1].Data[0] == &in[1].Data[0] {
		t.Fatal("output latent shares memory with the input")
	}
	p := model.DefaultParams()
	cond, latent := model.Encode(p, req.Prompt, req.Seed)
	if err := model.Denoise(context.Background(), p, cond, latent, req.Steps); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out.Tensors[1].Float32s(), latent) {
		t.Fatal("output differs from model.Denoise")
	}
}

func TestRunBadInputs(t *testing.T) {
	req := sdk.Request{ID: "r", Prompt: "p", Seed: 1, Steps: 2}
	good := encode(t, nil, req)
	other := encode(t, map[string]string{"frames": "2"}, req)
	short := good[1]
	short.Data = short.Data[:len(short.Data)-4]
	tests := []struct {
		name    string
		in      []tensor.Tensor
		wantErr string
	}{
		{"none", nil, "transformer: input tensors do not match the params: got 0 input tensors, want 2"},
		{"swapped", []tensor.Tensor{good[1], good[0]}, "input 0 is latent:float32[4 8 24 32], want context:float32[16 64]"},
		{"other params", []tensor.Tensor{other[0], other[1]}, "input 1 is latent:float32[4 2 24 32], want latent:float32[4 8 24 32]; give every phase of the pipeline the same params"},
		{"short data", []tensor.Tensor{good[0], short}, "input 1: bad tensor spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := transformer.New().Run(context.Background(), req, tt.in)
			if !errors.Is(err, model.ErrBadInput) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want model.ErrBadInput containing %q", err, tt.wantErr)
			}
		})
	}
	req.Steps = -1
	if _, err := transformer.New().Run(context.Background(), req, good); !errors.Is(err, model.ErrBadSteps) {
		t.Fatalf("steps -1: err = %v, want model.ErrBadSteps", err)
	}
}

func TestRunCancel(t *testing.T) {
	req := sdk.Request{ID: "r", Prompt: "p", Seed: 1, Steps: 1 << 30}
	in := encode(t, nil, req)
	ctx, cancel := context.WithCancel(context.Background())
	timer := time.AfterFunc(20*time.Millisecond, cancel)
	defer timer.Stop()
	defer cancel()
	_, err := transformer.New().Run(ctx, req, in)
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "transformer: ") {
		t.Fatalf("err = %v, want transformer: context canceled", err)
	}
}

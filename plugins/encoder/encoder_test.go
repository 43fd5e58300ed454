package encoder_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

func TestInfo(t *testing.T) {
	info, err := encoder.New().Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := sdk.Info{Name: "encoder", Kind: sdk.KindPhase, Version: "0.1.0", APIVersions: []int{sdk.PhaseAPIVersion}}
	if info.Name != want.Name || info.Kind != want.Kind || info.Version != want.Version || !slices.Equal(info.APIVersions, want.APIVersions) {
		t.Fatalf("Info = %+v, want %+v", info, want)
	}
	in, err := encoder.New().Inputs(context.Background(), sdk.Request{ID: "r"})
	if err != nil || len(in) != 0 {
		t.Fatalf("Inputs = %v, %v; want none", in, err)
	}
}

func TestConfigure(t *testing.T) {
	tests := []struct {
		name    string
		params  map[string]string
		want    model.Params
		wantErr string
	}{
		{name: "none", want: model.DefaultParams()},
		{name: "frames", params: map[string]string{"frames": "3"},
			want: func() model.Params { p := model.DefaultParams(); p.Frames = 3; return p }()},
		{name: "unknown key", params: map[string]string{"frame": "3"}, wantErr: `encoder: params: frame = "3": unknown param`},
		{name: "bad value", params: map[string]string{"channels": "two"}, wantErr: `encoder: params: channels = "two": not an integer`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := encoder.New()
			err := e.Configure(context.Background(), sdk.Config{Instance: "encoder-0", Params: tt.params})
			if tt.wantErr != "" {
				var pe *model.ParamError
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || !errors.As(err, &pe) {
					t.Fatalf("err = %v, want a *model.ParamError starting with %q", err, tt.wantErr)
				}
				if got := e.Params(); got != model.DefaultParams() {
					t.Fatalf("a failed Configure changed the params to %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := e.Params(); got != tt.want {
				t.Fatalf("Params = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRun(t *testing.T) {
	small := model.DefaultParams()
	small.Frames, small.ContextLen = 2, 5
	tests := []struct {
		name      string
		configure map[string]string // nil: Run without Configure
		p         model.Params
	}{
		{"defaults without Configure", nil, model.DefaultParams()},
		{"configured", map[string]string{"frames": "2", "context_len": "5"}, small},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := encoder.New()
			if tt.configure != nil {
				if err := e.Configure(context.Background(), sdk.Config{Params: tt.configure}); err != nil {
					t.Fatal(err)
				}
			}
			req := sdk.Request{ID: "r1", Prompt: "a cat", Seed: 9, Steps: 3}
			out, err := e.Run(context.Background(), req, nil)
			if err != nil {
				t.Fatal(err)
			}
			if out.Artifact != nil || len(out.Tensors) != 2 {
				t.Fatalf("output %+v, want two tensors and no artifact", out)
			}
			cond, latent := model.Encode(tt.p, req.Prompt, req.Seed)
			for i, want := range []struct {
				spec tensor.Spec
				data []float32
			}{{model.ContextSpec(tt.p), cond}, {model.LatentSpec(tt.p), latent}} {
				got := out.Tensors[i]
				if !got.Spec.Equal(want.spec) {
					t.Fatalf("tensor %d is %s, want %s", i, got.Spec, want.spec)
				}
				if err := got.Validate(); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got.Float32s(), want.data) {
					t.Fatalf("tensor %d differs from model.Encode", i)
				}
			}
		})
	}
}

func TestRunErrors(t *testing.T) {
	e := encoder.New()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	extra, _ := tensor.New(tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{1}})
	tests := []struct {
		name    string
		ctx     context.Context
		in      []tensor.Tensor
		wantErr string
		wantIs  error
	}{
		{"inputs", context.Background(), []tensor.Tensor{extra}, "encoder: got 1 input tensors, want none", nil},
		{"cancelled", cancelled, nil, "encoder: context canceled", context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.Run(tt.ctx, sdk.Request{ID: "r"}, tt.in)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("err = %v, want it to wrap %v", err, tt.wantIs)
			}
		})
	}
}

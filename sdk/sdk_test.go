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
	"github.com/phased/phased/sdk/tensor"
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

// Package smooth is a third-party phased phase between the transformer and
// the decoder: frame f of the latent becomes (1-s)·x[f] + s/2·(x[f-1] +
// x[f+1]), end frames repeated, which damps flicker; s is the param
// strength (0 to 1, default 0.5; 0 changes nothing).
package smooth

import (
	"context"
	"fmt"
	"strconv"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// Name is the plugin's name: its binary is phased-phase-smooth.
const Name = "smooth"

// Phase smooths latents of dims (channels, frames, height, width).
type Phase struct {
	dims     []int64
	strength float64
}

// New returns the phase with the built-in model's default sizes.
func New() *Phase { return &Phase{dims: []int64{4, 8, 24, 32}, strength: 0.5} }

// Configure reads the sizes (the built-in model's params) and strength.
func (p *Phase) Configure(_ context.Context, cfg sdk.Config) error {
	for i, key := range []string{"channels", "frames", "height", "width", "strength"} {
		v, ok := cfg.Params[key]
		n, err := strconv.ParseFloat(v, 64)
		switch {
		case !ok:
		case i == 4 && err == nil && n >= 0 && n <= 1:
			p.strength = n
		case i < 4 && err == nil && n >= 1 && n == float64(int64(n)):
			p.dims[i] = int64(n)
		default:
			return fmt.Errorf("%s: param %s = %q: want a positive integer (strength: 0 to 1)", Name, key, v)
		}
	}
	return nil
}

func (p *Phase) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Kind: sdk.KindPhase, Version: "1.0.0", APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

// Inputs is the latent, float32 [channels, frames, height, width].
func (p *Phase) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) {
	return []tensor.Spec{{Name: "latent", DType: tensor.Float32, Shape: p.dims}}, nil
}

// Run returns the smoothed latent, under the same name and spec.
func (p *Phase) Run(_ context.Context, _ sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	out, err := tensor.New(in[0].Spec)
	if err != nil {
		return sdk.Output{}, err
	}
	x, y, s := in[0].Float32s(), out.Float32s(), float32(p.strength)
	frames, plane := int(p.dims[1]), int(p.dims[2]*p.dims[3]) // values per frame
	for i := range y {
		f, prev, next := i/plane%frames, i-plane, i+plane
		if f == 0 { // the end frames stand in for their missing neighbour
			prev = i
		}
		if f == frames-1 {
			next = i
		}
		y[i] = (1-s)*x[i] + s/2*(x[prev]+x[next])
	}
	return sdk.Output{Tensors: []tensor.Tensor{out}}, nil
}

var _ sdk.Configurer = (*Phase)(nil)

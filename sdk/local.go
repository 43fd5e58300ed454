package sdk

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/phased/phased/sdk/tensor"
)

// RunLocal runs phases in order in this process, following the contract of
// a distributed pipeline: each phase receives, in the order of its Inputs,
// the outputs of the previous phase with those names (checked against the
// declared specs), and the last phase's artifact is returned. It is the
// reference that a distributed run of the same phases must match byte for
// byte, and a quick way for a phase author to test a pipeline.
func RunLocal(ctx context.Context, req Request, phases ...Phase) (*Artifact, error) {
	var prev []tensor.Tensor
	for i, ph := range phases {
		var in []tensor.Tensor
		if i > 0 {
			specs, err := ph.Inputs(ctx, req)
			if err != nil {
				return nil, fmt.Errorf("phase %d: inputs: %w", i, err)
			}
			if in, err = pick(prev, specs); err != nil {
				return nil, fmt.Errorf("phase %d: %w", i, err)
			}
		}
		out, err := ph.Run(ctx, req, in)
		if err != nil {
			return nil, fmt.Errorf("phase %d: %w", i, err)
		}
		if i == len(phases)-1 {
			if out.Artifact == nil {
				return nil, errors.New("the last phase returned no artifact")
			}
			return out.Artifact, nil
		}
		prev = out.Tensors
	}
	return nil, errors.New("no phases")
}

// pick selects, for each spec, the tensor of that name and checks it.
func pick(ts []tensor.Tensor, specs []tensor.Spec) ([]tensor.Tensor, error) {
	in := make([]tensor.Tensor, len(specs))
	for i, s := range specs {
		k := slices.IndexFunc(ts, func(t tensor.Tensor) bool { return t.Name == s.Name })
		if k < 0 {
			return nil, fmt.Errorf("input %q is not among the previous phase's outputs", s.Name)
		}
		if !ts[k].Spec.Equal(s) {
			return nil, fmt.Errorf("input %s: the previous phase produced %s", s, ts[k].Spec)
		}
		in[i] = ts[k]
	}
	return in, nil
}

package model

import (
	"errors"
	"fmt"

	"github.com/phased/phased/sdk/tensor"
)

// ErrBadInput is wrapped by CheckInputs' errors.
var ErrBadInput = errors.New("input tensors do not match the params")

// CheckInputs checks that in holds exactly the tensors of want, in order:
// same name, dtype and shape, and as many data bytes as the shape needs.
// A mismatch usually means that two phases of the pipeline were given
// different params; the error says so.
func CheckInputs(want []tensor.Spec, in []tensor.Tensor) error {
	if len(in) != len(want) {
		return fmt.Errorf("%w: got %d input tensors, want %d (%v)", ErrBadInput, len(in), len(want), want)
	}
	for i, w := range want {
		if !in[i].Spec.Equal(w) {
			return fmt.Errorf("%w: input %d is %s, want %s; give every phase of the pipeline the same params", ErrBadInput, i, in[i].Spec, w)
		}
		if err := in[i].Validate(); err != nil {
			return fmt.Errorf("%w: input %d: %w", ErrBadInput, i, err)
		}
	}
	return nil
}

package sdk

import (
	"context"

	"github.com/phased/phased/sdk/tensor"
)

// Checkpoint saves state, a denoising phase's state after step of total
// steps of the request being run, as the request's checkpoint, so that
// when this instance dies the request's next attempt resumes after step
// instead of from the start (Resume). Call it from Run after every step:
// it saves only when the supervisor asked for checkpoints (the phase's
// checkpoint_every = K in the config) and a save is due (step is a
// multiple of K, above 0 and below total), and reports whether it saved.
// ctx is Run's, or one derived from it; elsewhere (a unit test,
// RunLocal) it does nothing.
//
// state is everything step+1 reads besides Run's inputs and the request
// (a DDIM sampler's latent); it is copied to a file before Checkpoint
// returns, and host memory only. A save that fails returns its error;
// the Run may go on, and a retry then resumes from an earlier checkpoint
// or from the start.
func Checkpoint(ctx context.Context, step, total int, state ...tensor.Tensor) (bool, error) {
	if c, ok := ctx.Value(checkpointerKey{}).(Checkpointer); ok {
		return c.Save(ctx, step, total, state)
	}
	return false, nil
}

// Resume returns the request's checkpoint that Run should resume from:
// the step after which it was saved, and its state as it was given to
// Checkpoint. It returns 0 and nil when there is none: the request's
// first attempt, checkpoints off, or a checkpoint that does not fit this
// Run (another total, other inputs, a damaged file: the runtime logs
// why). Call it once, before the first step, with the Run's total steps;
// then run steps step+1 … total from state. For the artifact to be the
// same bytes as an uninterrupted run's, the steps must be deterministic.
func Resume(ctx context.Context, total int) (step int, state []tensor.Tensor) {
	if c, ok := ctx.Value(checkpointerKey{}).(Checkpointer); ok {
		return c.Resume(ctx, total)
	}
	return 0, nil
}

// Checkpointer keeps one Run's checkpoints; a phase runtime gives Run a
// context carrying one (WithCheckpointer). Phase authors call Checkpoint
// and Resume instead.
type Checkpointer interface {
	Save(ctx context.Context, step, total int, state []tensor.Tensor) (bool, error)
	Resume(ctx context.Context, total int) (int, []tensor.Tensor)
}

type checkpointerKey struct{}

// WithCheckpointer returns ctx carrying c, which Checkpoint and Resume
// call. A phase runtime (package sdk/phase, or another language's SDK)
// gives Run such a context; phase authors never call it.
func WithCheckpointer(ctx context.Context, c Checkpointer) context.Context {
	return context.WithValue(ctx, checkpointerKey{}, c)
}

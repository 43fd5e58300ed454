package phase

import (
	"context"
	"errors"
	"io/fs"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/checkpoint"
	"github.com/phased/phased/sdk/tensor"
)

// runCheckpointer is the sdk.Checkpointer of one Run whose request has a
// checkpoint (docs/protocol.md 8.4): it saves to and resumes from the
// file the supervisor named, for this request and these inputs only.
type runCheckpointer struct {
	spec    sdk.CheckpointSpec
	request string
	in      []tensor.Tensor
	rep     *runReporter
	log     hclog.Logger

	once   sync.Once
	inputs []uint64 // the checksums of in, made once
}

// inputSums returns the checksums of the Run's inputs; 0 for one in GPU
// memory, which the runtime does not read.
func (c *runCheckpointer) inputSums() []uint64 {
	c.once.Do(func() {
		c.inputs = make([]uint64, len(c.in))
		for i, t := range c.in {
			if !t.OnDevice() {
				c.inputs[i] = tensor.Checksum(t.Data)
			}
		}
	})
	return c.inputs
}

func (c *runCheckpointer) Save(ctx context.Context, step, total int, state []tensor.Tensor) (bool, error) {
	if !checkpoint.Due(step, total, c.spec.Every) || ctx.Err() != nil {
		return false, nil
	}
	h := checkpoint.Header{Request: c.request, Step: step, Total: total, Inputs: c.inputSums()}
	if err := checkpoint.Write(c.spec.Path, h, state); err != nil {
		return false, err
	}
	c.log.Debug("checkpoint saved", "request", c.request, "step", step, "total", total)
	return true, nil
}

func (c *runCheckpointer) Resume(_ context.Context, total int) (int, []tensor.Tensor) {
	h, state, err := checkpoint.Read(c.spec.Path)
	if err == nil {
		err = checkpoint.Check(h, c.request, total, c.inputSums())
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, nil // the request's first attempt, or one before any save
	case err != nil:
		c.log.Warn("not resuming from the checkpoint: starting from step 0", "request", c.request, "why", err)
		return 0, nil
	}
	c.log.Info("resuming from the checkpoint", "request", c.request, "step", h.Step, "total", total)
	c.rep.resumeOffered(h.Step)
	return h.Step, state
}

// checkpointContext returns ctx carrying the Run's checkpointer when its
// request has a checkpoint.
func (r *Runtime) checkpointContext(ctx context.Context, req sdk.Request, in []tensor.Tensor, rep *runReporter) context.Context {
	if req.Checkpoint.Path == "" || req.Checkpoint.Every <= 0 {
		return ctx
	}
	return sdk.WithCheckpointer(ctx, &runCheckpointer{spec: req.Checkpoint, request: req.ID, in: in, rep: rep, log: r.logger})
}

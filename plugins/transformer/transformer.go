// Package transformer is phased's built-in middle phase: it refines the
// noise latent from the encoder phase for the request's number of steps,
// conditioned on the context, with the built-in text-to-video model
// (package model), and hands the latent to the decoder phase. It is the
// compute-heavy phase, the one to run several instances of.
//
// Lifecycle: New builds a Phase without side effects; Configure, called
// once before anything else, sets the model params (DefaultParams when it
// is never called); Info, Inputs and Run are then safe to call
// concurrently. The phase holds no resources, so it has no Close.
package transformer

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// Name is the plugin's name, used in its Info, its errors and the
// supervisor's config (plugin = "transformer").
const Name = "transformer"

// Version is the plugin's own version, reported in its Info.
const Version = "0.1.0"

// Phase is the transformer phase. Build it with New.
type Phase struct {
	set atomic.Pointer[settings] // nil until Configure
}

// settings is what Configure sets.
type settings struct {
	params model.Params
	log    hclog.Logger
}

// New returns a transformer with the default model params. It has no side
// effects.
func New() *Phase { return &Phase{} }

// Configure parses cfg.Params with model.ParseParams (see the README for
// the keys) and keeps cfg.Logger.
func (t *Phase) Configure(_ context.Context, cfg sdk.Config) error {
	p, err := model.ParseParams(cfg.Params)
	if err != nil {
		return fmt.Errorf("%s: params: %w", Name, err)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	t.set.Store(&settings{params: p, log: log})
	log.Debug("configured", "params", fmt.Sprintf("%+v", p))
	return nil
}

// ValidateParams checks params as Configure does, without configuring
// anything: one problem per unknown or bad param (model.ParamProblems).
func (t *Phase) ValidateParams(_ context.Context, params map[string]string) ([]sdk.ParamProblem, error) {
	return model.ParamProblems(params), nil
}

// Info describes the plugin.
func (t *Phase) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Kind: sdk.KindPhase, Version: Version, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

// Inputs returns the context and the latent specs (model.ContextSpec and
// model.LatentSpec), the encoder's outputs.
func (t *Phase) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) {
	p := t.Params()
	return []tensor.Spec{model.ContextSpec(p), model.LatentSpec(p)}, nil
}

// Run denoises a copy of the input latent for req.Steps steps with
// model.Denoise, conditioned on the input context, and returns the context
// (passed on as it came, so that transformers can be chained) and the new
// latent. It reports each step done with sdk.ReportProgress, saves the
// latent with sdk.Checkpoint after each step (when the supervisor asks
// for checkpoints), and resumes from the request's checkpoint when it
// has one (sdk.Resume). It does not
// modify its inputs. It returns an error wrapping ctx.Err() soon after
// ctx is done, and one wrapping model.ErrBadInput when the inputs do not
// match the params.
func (t *Phase) Run(ctx context.Context, req sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	r, err := t.start(ctx, req, in)
	if err != nil {
		return sdk.Output{}, err
	}
	for !r.d.Done() {
		if err := r.step(ctx); err != nil {
			return sdk.Output{}, err
		}
	}
	return r.output(), nil
}

// BatchLimits are the transformer's batching defaults: a batch of one,
// that is none (each request computes alone, concurrently with the
// others), unless the config's batch { max_size } asks for more.
func (t *Phase) BatchLimits() sdk.BatchLimits { return sdk.BatchLimits{MaxSize: 1} }

// RunBatch denoises the items in lockstep, a step of each in turn, as a
// GPU runs a batch; each item's latent is the one Run gives it, bit for
// bit, with its own progress, checkpoints, resume and cancellation. An
// item that fails leaves the batch; the others go on.
func (t *Phase) RunBatch(_ context.Context, items []sdk.BatchItem) []sdk.BatchResult {
	res := make([]sdk.BatchResult, len(items))
	runs := make([]*run, len(items))
	for i, it := range items {
		runs[i], res[i].Err = t.start(it.Ctx, it.Request, it.Inputs)
	}
	for live := true; live; {
		live = false
		for i, r := range runs {
			if res[i].Err != nil || r.d.Done() {
				continue
			}
			res[i].Err = r.step(items[i].Ctx)
			live = live || res[i].Err == nil && !r.d.Done()
		}
	}
	for i, r := range runs {
		if res[i].Err == nil {
			res[i].Output = r.output()
		}
	}
	return res
}

// run is one request's denoising: its latent and where it is.
type run struct {
	set *settings
	req sdk.Request
	ctx context.Context // the Run's, for progress and checkpoints
	in  []tensor.Tensor
	out tensor.Tensor
	d   *model.Denoiser
}

// start checks a request's inputs and prepares its latent: a copy of
// the input latent, or the state of its checkpoint when it resumes.
func (t *Phase) start(ctx context.Context, req sdk.Request, in []tensor.Tensor) (*run, error) {
	set := t.settings()
	p := set.params
	if err := model.CheckInputs([]tensor.Spec{model.ContextSpec(p), model.LatentSpec(p)}, in); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	// In memory that the hop to the decoder lends instead of copying.
	out, err := sdk.Alloc(ctx, model.LatentSpec(p))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	// A retry of a request whose instance died resumes from the latent
	// of its last checkpoint, if it has one.
	from, state := sdk.Resume(ctx, req.Steps)
	switch {
	case from > 0 && len(state) == 1 && state[0].Spec.Equal(out.Spec):
		copy(out.Data, state[0].Data)
	default:
		from = 0
		copy(out.Data, in[1].Data)
	}
	d, err := model.NewDenoiser(ctx, p, in[0].Float32s(), out.Float32s(), from, req.Steps)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	return &run{set: set, req: req, ctx: ctx, in: in, out: out, d: d}, nil
}

// step runs the request's next step, saves a checkpoint when one is due
// and reports it.
func (r *run) step(ctx context.Context) error {
	if err := r.d.Step(ctx); err != nil {
		return fmt.Errorf("%s: %w", Name, err)
	}
	done, total := r.d.Steps(), r.req.Steps
	if _, err := sdk.Checkpoint(r.ctx, done, total, r.out); err != nil {
		r.set.log.Warn("checkpoint not saved", "request", r.req.ID, "step", done, "error", err)
	}
	sdk.ReportProgress(r.ctx, done, total)
	if r.d.Done() {
		r.set.log.Debug("denoised", "request", r.req.ID, "steps", total)
	}
	return nil
}

// output is the context, passed on as it came (an input view: the SDK
// sends outputs before it releases inputs, so no copy), and the latent.
func (r *run) output() sdk.Output {
	return sdk.Output{Tensors: []tensor.Tensor{r.in[0], r.out}}
}

// Params returns the model params in use: DefaultParams until Configure.
func (t *Phase) Params() model.Params { return t.settings().params }

func (t *Phase) settings() *settings {
	if s := t.set.Load(); s != nil {
		return s
	}
	return &settings{params: model.DefaultParams(), log: hclog.NewNullLogger()}
}

var (
	_ sdk.BatchPhase      = (*Phase)(nil)
	_ sdk.Phase           = (*Phase)(nil)
	_ sdk.Configurer      = (*Phase)(nil)
	_ sdk.ParamsValidator = (*Phase)(nil)
)

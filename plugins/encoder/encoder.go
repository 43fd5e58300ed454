// Package encoder is phased's built-in first phase: it turns a request's
// prompt and seed into the context tensor and the noise latent of the
// built-in text-to-video model (package model), for the transformer phase.
//
// Lifecycle: New builds a Phase without side effects; Configure, called
// once before anything else, sets the model params (DefaultParams when it
// is never called); Info, Inputs and Run are then safe to call
// concurrently. The phase holds no resources, so it has no Close.
package encoder

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
// supervisor's config (plugin = "encoder").
const Name = "encoder"

// Version is the plugin's own version, reported in its Info.
const Version = "0.1.0"

// Phase is the encoder phase. Build it with New.
type Phase struct {
	set atomic.Pointer[settings] // nil until Configure
}

// settings is what Configure sets.
type settings struct {
	params model.Params
	log    hclog.Logger
}

// New returns an encoder with the default model params. It has no side
// effects.
func New() *Phase { return &Phase{} }

// Configure parses cfg.Params with model.ParseParams (see the README for
// the keys) and keeps cfg.Logger.
func (e *Phase) Configure(_ context.Context, cfg sdk.Config) error {
	p, err := model.ParseParams(cfg.Params)
	if err != nil {
		return fmt.Errorf("%s: params: %w", Name, err)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	e.set.Store(&settings{params: p, log: log})
	log.Debug("configured", "params", fmt.Sprintf("%+v", p))
	return nil
}

// ValidateParams checks params as Configure does, without configuring
// anything: one problem per unknown or bad param (model.ParamProblems).
func (e *Phase) ValidateParams(_ context.Context, params map[string]string) ([]sdk.ParamProblem, error) {
	return model.ParamProblems(params), nil
}

// Info describes the plugin.
func (e *Phase) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Kind: sdk.KindPhase, Version: Version, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

// Inputs returns no specs: the encoder is the first phase and reads only
// the request.
func (e *Phase) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) { return nil, nil }

// Run returns the context and the noise latent that model.Encode computes
// from req.Prompt and req.Seed, in that order (model.ContextSpec and
// model.LatentSpec).
func (e *Phase) Run(ctx context.Context, req sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	if len(in) != 0 {
		return sdk.Output{}, fmt.Errorf("%s: got %d input tensors, want none", Name, len(in))
	}
	if err := ctx.Err(); err != nil {
		return sdk.Output{}, fmt.Errorf("%s: %w", Name, err)
	}
	set := e.settings()
	p := set.params
	cond, latent := model.Encode(p, req.Prompt, req.Seed)
	cs, ls := model.ContextSpec(p), model.LatentSpec(p)
	ct, err := tensor.FromFloat32(cs.Name, cs.Shape, cond)
	if err != nil {
		return sdk.Output{}, fmt.Errorf("%s: %w", Name, err)
	}
	lt, err := tensor.FromFloat32(ls.Name, ls.Shape, latent)
	if err != nil {
		return sdk.Output{}, fmt.Errorf("%s: %w", Name, err)
	}
	set.log.Debug("encoded", "request", req.ID, "prompt_bytes", len(req.Prompt), "seed", req.Seed)
	return sdk.Output{Tensors: []tensor.Tensor{ct, lt}}, nil
}

// Params returns the model params in use: DefaultParams until Configure.
func (e *Phase) Params() model.Params { return e.settings().params }

func (e *Phase) settings() *settings {
	if s := e.set.Load(); s != nil {
		return s
	}
	return &settings{params: model.DefaultParams(), log: hclog.NewNullLogger()}
}

var (
	_ sdk.Phase           = (*Phase)(nil)
	_ sdk.Configurer      = (*Phase)(nil)
	_ sdk.ParamsValidator = (*Phase)(nil)
)

package sdk_test

import (
	"context"
	"fmt"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// denoiser is a one-phase pipeline that refines for req.Steps steps and
// reports each one.
type denoiser struct{}

func (denoiser) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "denoiser", Kind: sdk.KindPhase, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (denoiser) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) { return nil, nil }

func (denoiser) Run(ctx context.Context, req sdk.Request, _ []tensor.Tensor) (sdk.Output, error) {
	x := 1.0
	for i := range req.Steps {
		if err := ctx.Err(); err != nil {
			return sdk.Output{}, err
		}
		x /= 2
		// In a plugin, the supervisor's Progress stream gets
		// {Request: req.ID, Stage: "computing", Done: i+1, Total: req.Steps};
		// under sdk.RunLocal or in a unit test it does nothing.
		sdk.ReportProgress(ctx, i+1, req.Steps)
	}
	return sdk.Output{Artifact: &sdk.Artifact{Path: fmt.Sprint(x)}}, nil
}

func ExampleReportProgress() {
	art, err := sdk.RunLocal(context.Background(), sdk.Request{ID: "r1", Steps: 3}, denoiser{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(art.Path)
	// Output: 0.125
}

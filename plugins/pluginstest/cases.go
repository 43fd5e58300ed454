// Package pluginstest holds the conformance cases of the built-in phases
// (sdk/phasetest), shared by their in-memory tests and the end-to-end
// tests of their binaries.
package pluginstest

import (
	"github.com/phased/phased/plugins/decoder"
	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phasetest"
	"github.com/phased/phased/sdk/tensor"
)

// Cases returns the conformance case of each built-in phase, by plugin
// name, with the tensors each hands the next one: the encoder's context
// and latent go to the transformer, whose latent goes to the decoder,
// which writes the GIF.
func Cases() map[string]phasetest.Case {
	params := map[string]string{"frames": "3", "height": "8", "width": "12"}
	p, err := model.ParseParams(params)
	if err != nil {
		panic("pluginstest: " + err.Error())
	}
	req := sdk.Request{ID: "pt000001", Prompt: "a red fox", Seed: 3, Steps: 2}
	return map[string]phasetest.Case{
		encoder.Name:     {Params: params, Request: req, Next: []tensor.Spec{model.ContextSpec(p), model.LatentSpec(p)}},
		transformer.Name: {Params: params, Request: req, Next: []tensor.Spec{model.LatentSpec(p)}},
		decoder.Name:     {Params: params, Request: req},
	}
}

// Command badplugin is a test-only phase plugin that misbehaves according to
// the name it is installed under:
//
//	phased-phase-apiv2    speaks phase API version 2 only
//	phased-phase-proto2   speaks go-plugin protocol version 2
//	phased-phase-policy   says it is a policy plugin
//	phased-phase-misnamed says its name is "bad"
package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/go-plugin"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phase"
	"github.com/phased/phased/sdk/tensor"
)

type bad struct {
	kind sdk.Kind
	api  int
}

func (p bad) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "bad", Kind: p.kind, Version: "0.0.0", APIVersions: []int{p.api}}, nil
}

func (bad) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) { return nil, nil }

func (bad) Run(context.Context, sdk.Request, []tensor.Tensor) (sdk.Output, error) {
	return sdk.Output{}, nil
}

func main() {
	name := filepath.Base(os.Args[0])
	switch {
	case strings.HasSuffix(name, "-apiv2"):
		phase.Serve(bad{kind: sdk.KindPhase, api: 2})
	case strings.HasSuffix(name, "-misnamed"):
		phase.Serve(bad{kind: sdk.KindPhase, api: sdk.PhaseAPIVersion})
	case strings.HasSuffix(name, "-policy"):
		phase.Serve(bad{kind: sdk.KindPolicy, api: sdk.PhaseAPIVersion})
	case strings.HasSuffix(name, "-proto2"):
		hs := sdk.Handshake
		hs.ProtocolVersion = 2
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig: hs,
			Plugins:         map[string]plugin.Plugin{sdk.PluginPhase: &sdk.PhasePlugin{Impl: phase.New(bad{kind: sdk.KindPhase, api: 1}, nil)}},
			GRPCServer:      plugin.DefaultGRPCServer,
		})
	}
}

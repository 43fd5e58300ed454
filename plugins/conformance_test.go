package plugins_test

import (
	"testing"

	"github.com/phased/phased/plugins/decoder"
	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/plugins/pluginstest"
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phasetest"
)

// TestConformance: every built-in phase keeps the phase protocol, checked
// by the conformance kit through the real gRPC layer in memory.
func TestConformance(t *testing.T) {
	cases := pluginstest.Cases()
	for name, newPhase := range map[string]func() sdk.Phase{
		encoder.Name:     func() sdk.Phase { return encoder.New() },
		transformer.Name: func() sdk.Phase { return transformer.New() },
		decoder.Name:     func() sdk.Phase { return decoder.New() },
	} {
		t.Run(name, func(t *testing.T) { phasetest.Run(t, newPhase, cases[name]) })
	}
}

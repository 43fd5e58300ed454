// Package phasetest tests phase plugins: Start serves a Go sdk.Phase
// through the real gRPC layer and the Go phase runtime in memory, and the
// conformance kit (Run, RunBinary) checks that a phase plugin, in memory or
// a built binary of any language, keeps the phase protocol
// (docs/protocol.md).
package phasetest

import (
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phase"
	"github.com/phased/phased/sdk/plugintest"
)

// Start serves p over gRPC in memory, the way phase.Serve serves it in a
// plugin process, and returns the supervisor's side of it: every
// PhaseControl call, Ready (for a Loader) and Progress (for
// sdk.ReportProgress) included. The connection closes when the test ends.
func Start(t testing.TB, p sdk.Phase) sdk.PhaseControl {
	t.Helper()
	return plugintest.Dispense[sdk.PhaseControl](t, sdk.PluginPhase, &sdk.PhasePlugin{Impl: phase.New(p, nil)})
}

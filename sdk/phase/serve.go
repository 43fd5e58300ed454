// Package phase is the Go runtime of a phase plugin: it serves the Phase
// service of the phased protocol around an author's sdk.Phase, owning the
// process's transfer manager (package sdk/transfer, which links libzmq
// through cgo). Only phase plugins import it: the contract they implement,
// and everything a policy or the supervisor needs, is package sdk.
//
// A phase plugin's main is one call:
//
//	func main() { phase.Serve(encoder.New()) }
//
// The Runtime maps the supervisor's calls (sdk.PhaseControl) onto the
// phase: Configure starts the transfer manager and the phase's Load;
// OpenRoom opens a room side, the receiver's buffers sized from the
// phase's Inputs; Run waits for the inputs, calls the phase's Run and
// hands its outputs to the transfer manager; RemoveRoom and Release tear
// down in order. docs/protocol.md specifies the same behaviour for phase
// plugins written in other languages.
package phase

import (
	"github.com/phased/phased/sdk"
)

// Serve serves p as a phase plugin process: it speaks the go-plugin
// handshake on stdout, logs JSON to stderr, and returns when the
// supervisor stops the process.
func Serve(p sdk.Phase) {
	logger := sdk.PluginLogger()
	sdk.RaiseFDLimit(logger)
	sdk.ServePhaseControl(New(p, logger), logger)
}

var _ sdk.PhaseControl = (*Runtime)(nil)

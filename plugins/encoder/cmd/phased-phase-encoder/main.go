// Command phased-phase-encoder serves phased's built-in encoder phase (package
// github.com/phased/phased/plugins/encoder) as a phase plugin. The supervisor
// starts it; it is not meant to be run by hand.
package main

import (
	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/sdk/phase"
)

func main() { phase.Serve(encoder.New()) }

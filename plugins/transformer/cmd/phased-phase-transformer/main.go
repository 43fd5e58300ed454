// Command phased-phase-transformer serves phased's built-in transformer phase (package
// github.com/phased/phased/plugins/transformer) as a phase plugin. The supervisor
// starts it; it is not meant to be run by hand.
package main

import (
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk/phase"
)

func main() { phase.Serve(transformer.New()) }

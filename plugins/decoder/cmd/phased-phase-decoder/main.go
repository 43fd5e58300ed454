// Command phased-phase-decoder serves phased's built-in decoder phase (package
// github.com/phased/phased/plugins/decoder) as a phase plugin. The supervisor
// starts it; it is not meant to be run by hand.
package main

import (
	"github.com/phased/phased/plugins/decoder"
	"github.com/phased/phased/sdk/phase"
)

func main() { phase.Serve(decoder.New()) }

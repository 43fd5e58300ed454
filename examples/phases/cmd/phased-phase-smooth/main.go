// Command phased-phase-smooth serves the smooth phase (package
// example.com/phased-phases) as a phased phase plugin.
package main

import (
	smooth "example.com/phased-phases"

	"github.com/phased/phased/sdk/phase"
)

func main() { phase.Serve(smooth.New()) }

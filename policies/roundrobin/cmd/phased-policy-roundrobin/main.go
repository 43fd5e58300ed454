// Command phased-policy-roundrobin serves the round-robin policy as a phased
// policy plugin. The supervisor starts it; it is not run by hand.
package main

import (
	"github.com/phased/phased/policies/roundrobin"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServePolicy(roundrobin.New()) }

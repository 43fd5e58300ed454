// Command phased-policy-random serves the random policy as a phased policy
// plugin. The supervisor starts it; it is not run by hand.
package main

import (
	"github.com/phased/phased/policies/random"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServePolicy(random.New()) }

// Command phased-policy-weighted serves the weighted policy as a phased policy
// plugin. The supervisor starts it; it is not run by hand.
package main

import (
	"github.com/phased/phased/policies/weighted"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServePolicy(weighted.New()) }

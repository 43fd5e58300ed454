// Command phased-policy-affinity serves the affinity policy as a phased policy
// plugin. The supervisor starts it; it is not run by hand.
package main

import (
	"github.com/phased/phased/policies/affinity"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServePolicy(affinity.New()) }

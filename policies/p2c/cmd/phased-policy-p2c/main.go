// Command phased-policy-p2c serves the p2c policy as a phased policy
// plugin. The supervisor starts it; it is not run by hand.
package main

import (
	"github.com/phased/phased/policies/p2c"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServePolicy(p2c.New()) }

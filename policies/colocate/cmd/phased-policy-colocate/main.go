// Command phased-policy-colocate serves the colocate policy as a phased
// policy plugin. The supervisor starts it; it is not run by hand.
package main

import (
	"github.com/phased/phased/policies/colocate"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServePolicy(colocate.New()) }

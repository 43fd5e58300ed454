// Command phased-policy-leastloaded serves the leastloaded policy as a phased policy
// plugin. The supervisor starts it; it is not run by hand.
package main

import (
	"github.com/phased/phased/policies/leastloaded"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServePolicy(leastloaded.New()) }

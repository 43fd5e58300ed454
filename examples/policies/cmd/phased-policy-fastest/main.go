// Command phased-policy-fastest serves the fastest policy as a phased
// policy plugin: build it, drop it into the supervisor's plugin directory,
// and select it with `supervisor policy set PHASE fastest` or
// policy = "fastest" in the config.
package main

import (
	fastest "example.com/phased-policies"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServePolicy(fastest.Policy{}) }

// Command phased-scaler-threshold serves the threshold scaler as a phased
// scaler plugin. The supervisor starts it; it is not run by hand.
package main

import (
	"github.com/phased/phased/scalers/threshold"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServeScaler(threshold.New()) }

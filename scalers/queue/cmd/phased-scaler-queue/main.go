// Command phased-scaler-queue serves the queue scaler as a phased scaler
// plugin. The supervisor starts it; it is not run by hand.
package main

import (
	"github.com/phased/phased/scalers/queue"
	"github.com/phased/phased/sdk"
)

func main() { sdk.ServeScaler(queue.New()) }

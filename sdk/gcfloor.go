package sdk

import (
	"os"

	"github.com/hashicorp/go-hclog"
)

// GCFloor is how far a process's heap grows, at the least, between two
// garbage collections once SetGCFloor has run.
const GCFloor = 64 << 20

// ballast holds SetGCFloor's allocation for the life of the process.
var ballast []byte

// SetGCFloor keeps the Go garbage collector from running before the heap
// has grown by about GCFloor, unless GOGC or GOMEMLIMIT is set in the
// environment (then the user's setting rules alone). The supervisor and
// the plugin processes keep a small live heap (a few MiB) and allocate
// about 0.3 to 1 MiB per request, so at Go's default (a collection each
// time the heap doubles, from 4 MiB) a collection ran every few requests
// in each of them, with its worker threads waking on every core:
// docs/benchmarks.md measures what it cost a request. The floor is a
// pointer-free allocation that nothing ever reads or writes: the
// collector counts it as live heap but never scans it, and the kernel
// never backs its pages, so it costs address space, not memory. A heap
// that is large anyway (a model's weights) is collected as before:
// GCFloor is small beside it. Call it once, early in main.
func SetGCFloor(logger hclog.Logger) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		logger.Debug("GOGC or GOMEMLIMIT is set: no garbage-collection floor")
		return
	}
	if ballast == nil {
		ballast = make([]byte, GCFloor)
	}
}

// Command faultypolicy is a policy plugin for the end-to-end tests: round
// robin, except that a request whose key is "crash" makes the process exit
// and one whose key is "hang" gets no answer. Installed as
// phased-policy-gated, it is slow to start: when PHASED_TEST_GATE names a
// file, it writes GATE.started and serves only once GATE exists.
package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/phased/phased/policies/roundrobin"
	"github.com/phased/phased/sdk"
)

type faulty struct {
	name string
	rr   *roundrobin.Policy
}

func (f faulty) Info(context.Context) (sdk.Info, error) { return sdk.PolicyInfo(f.name, "test"), nil }

func (f faulty) Schedule(ctx context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	switch req.Key {
	case "crash":
		os.Exit(3)
	case "hang":
		select {} // ignores ctx, as a stuck plugin does
	}
	return f.rr.Schedule(ctx, req)
}

func main() {
	name := strings.TrimPrefix(filepath.Base(os.Args[0]), "phased-policy-")
	if gate := os.Getenv("PHASED_TEST_GATE"); name == "gated" && gate != "" {
		if err := os.WriteFile(gate+".started", nil, 0o600); err != nil {
			os.Exit(2)
		}
		for {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	sdk.ServePolicy(faulty{name: name, rr: roundrobin.New()})
}

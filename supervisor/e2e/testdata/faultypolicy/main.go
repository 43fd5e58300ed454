// Command faultypolicy is a policy plugin for the end-to-end tests: round
// robin, except that a request whose key is "crash" makes the process exit
// and one whose key is "hang" gets no answer.
package main

import (
	"context"
	"os"

	"github.com/phased/phased/policies/roundrobin"
	"github.com/phased/phased/sdk"
)

type faulty struct{ rr *roundrobin.Policy }

func (f faulty) Info(context.Context) (sdk.Info, error) { return sdk.PolicyInfo("faulty", "test"), nil }

func (f faulty) Schedule(ctx context.Context, req sdk.ScheduleRequest) (sdk.Decision, error) {
	switch req.Key {
	case "crash":
		os.Exit(3)
	case "hang":
		select {} // ignores ctx, as a stuck plugin does
	}
	return f.rr.Schedule(ctx, req)
}

func main() { sdk.ServePolicy(faulty{rr: roundrobin.New()}) }

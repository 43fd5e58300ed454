// Package policytest is the conformance kit for phased scheduling policies.
// A policy author runs it from their own tests, against their
// implementation and against their built binary:
//
//	func TestConformance(t *testing.T) {
//		policytest.Run(t, func() sdk.Policy { return mypolicy.New() })
//	}
//
//	func TestBinary(t *testing.T) {
//		policytest.RunBinary(t, "bin/phased-policy-mypolicy") // built beforehand
//	}
//
// Run calls the policy through the same gRPC layer the supervisor uses (in
// memory); RunBinary starts the binary as the supervisor does (go-plugin,
// handshake, AutoMTLS). Both check what the supervisor relies on:
//
//   - Info names a policy (kind "policy") that speaks sdk.PolicyAPIVersion,
//     and for a binary, by the NAME of its file phased-policy-NAME;
//   - every phase of a request gets a choice, and only a ready candidate of
//     that phase, whatever the labels, loads and indexes say;
//   - membership comes from each request only: candidates that appear,
//     vanish, or stop being ready between calls are handled, and a phase
//     never seen before is served;
//   - a phase without a ready candidate fails the call with an error (not
//     a panic, not a made-up choice), and the policy serves the next call;
//   - concurrent calls are safe (run your tests with -race).
package policytest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/plugintest"
)

// Run checks the policy that newPolicy returns through the real gRPC layer,
// in memory. Each check gets a fresh policy.
func Run(t *testing.T, newPolicy func() sdk.Policy) {
	t.Helper()
	check(t, "", func(t *testing.T) sdk.Policy { return plugintest.Policy(t, newPolicy()) })
}

// RunBinary checks the policy plugin binary at path, started as the
// supervisor starts it; each check starts its own process. Its Info must
// also name it as its file does (phased-policy-NAME).
func RunBinary(t *testing.T, path string) {
	t.Helper()
	check(t, plugintest.NameOf(path, sdk.KindPolicy), func(t *testing.T) sdk.Policy { return StartBinary(t, path) })
}

// StartBinary starts the policy plugin binary at path as the supervisor
// does and returns its client; the process is stopped when the test ends.
func StartBinary(t testing.TB, path string) sdk.Policy {
	t.Helper()
	raw := plugintest.Start(t, path, sdk.KindPolicy).Raw
	p, ok := raw.(sdk.Policy)
	if !ok {
		t.Fatalf("policytest: %s: dispensed %T, not a policy", path, raw)
	}
	return p
}

// check runs every check; name, if set, is the name Info must answer.
func check(t *testing.T, name string, start func(t *testing.T) sdk.Policy) {
	t.Run("Info", func(t *testing.T) { checkInfo(t, start(t), name) })
	t.Run("ChoosesReadyCandidates", func(t *testing.T) { checkReady(t, start(t)) })
	t.Run("MembershipFromRequests", func(t *testing.T) { checkMembership(t, start(t)) })
	t.Run("NoReadyCandidate", func(t *testing.T) { checkNoReady(t, start(t)) })
	t.Run("Concurrent", func(t *testing.T) { checkConcurrent(t, start(t)) })
}

// timeout bounds every call: the supervisor gives a policy little time.
const timeout = 5 * time.Second

func schedule(t *testing.T, p sdk.Policy, req sdk.ScheduleRequest) (sdk.Decision, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return p.Schedule(ctx, req)
}

func checkInfo(t *testing.T, p sdk.Policy, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	info, err := p.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	plugintest.CheckInfo(t, info, sdk.KindPolicy, name)
}

// phases builds a request: per phase, n candidates named PHASE-i; ready
// says which are ready; every candidate has a load, a latency and labels.
func phases(id, key string, spec map[string][]bool) sdk.ScheduleRequest {
	req := sdk.ScheduleRequest{RequestID: id, Key: key}
	for _, name := range slices.Sorted(maps.Keys(spec)) {
		pc := sdk.PhaseCandidates{Phase: name}
		for i, ready := range spec[name] {
			pc.Candidates = append(pc.Candidates, sdk.Candidate{
				ID: fmt.Sprintf("%s-%d", name, i), Index: i, Ready: ready,
				OpenRooms: (i * 7) % 5, Inflight: i % 3, LatencyEWMAms: float64(10 + i),
				Labels: map[string]string{"zone": fmt.Sprint(i % 2), "weight": fmt.Sprint(1 + i%3)},
			})
		}
		req.Phases = append(req.Phases, pc)
	}
	return req
}

// validate checks that d holds, for every phase of req, a ready candidate
// of that phase, and nothing else.
func validate(req sdk.ScheduleRequest, d sdk.Decision) error {
	if len(d.Choices) != len(req.Phases) {
		return fmt.Errorf("%d choices for %d phases: %v", len(d.Choices), len(req.Phases), d.Choices)
	}
	for _, ph := range req.Phases {
		id, ok := d.Choices[ph.Phase]
		if !ok {
			return fmt.Errorf("no choice for phase %q: %v", ph.Phase, d.Choices)
		}
		found := false
		for _, c := range ph.Candidates {
			if c.ID == id {
				if !c.Ready {
					return fmt.Errorf("phase %q: chose %s, which is not ready", ph.Phase, id)
				}
				found = true
			}
		}
		if !found {
			return fmt.Errorf("phase %q: chose %q, not one of its candidates", ph.Phase, id)
		}
	}
	return nil
}

func checkReady(t *testing.T, p sdk.Policy) {
	spec := map[string][]bool{
		"encoder":     {true},
		"transformer": {false, true, true, false, true},
		"decoder":     {true, false},
	}
	for i := range 200 {
		req := phases(fmt.Sprintf("r%d", i), fmt.Sprintf("k%d", i%7), spec)
		d, err := schedule(t, p, req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if err := validate(req, d); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
}

func checkMembership(t *testing.T, p sdk.Policy) {
	steps := []map[string][]bool{
		{"transformer": {true, true, true}},
		{"transformer": {true}},                                       // two vanished
		{"transformer": {false, true, true, true, true}},              // they came back, more came, one is not ready
		{"transformer": {true, true}, "upscaler": {true, true, true}}, // a phase never seen
		{"transformer": {false, false, true}},
	}
	for i, spec := range steps {
		for j := range 20 {
			req := phases(fmt.Sprintf("m%d-%d", i, j), "", spec)
			d, err := schedule(t, p, req)
			if err != nil {
				t.Fatalf("step %d, request %d: %v", i, j, err)
			}
			if err := validate(req, d); err != nil {
				t.Fatalf("step %d, request %d: %v", i, j, err)
			}
		}
	}
}

func checkNoReady(t *testing.T, p sdk.Policy) {
	for _, spec := range []map[string][]bool{
		{"transformer": {false, false}},
		{"encoder": {true}, "transformer": {}},
	} {
		req := phases("none", "", spec)
		d, err := schedule(t, p, req)
		if err == nil {
			t.Fatalf("no ready candidate in %v: got choices %v, want an error", spec, d.Choices)
		}
		if strings.Contains(err.Error(), "panic") {
			t.Fatalf("no ready candidate: the policy panicked: %v", err)
		}
	}
	// And it still serves.
	req := phases("after", "", map[string][]bool{"transformer": {true, true}})
	d, err := schedule(t, p, req)
	if err == nil {
		err = validate(req, d)
	}
	if err != nil {
		t.Fatalf("the call after a failure: %v", err)
	}
}

func checkConcurrent(t *testing.T, p sdk.Policy) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				req := phases(fmt.Sprintf("c%d-%d", g, i), fmt.Sprint(i%5), map[string][]bool{"transformer": {true, i%2 == 0, true}, "decoder": {true}})
				d, err := schedule(t, p, req)
				if err == nil {
					err = validate(req, d)
				}
				if err != nil {
					errs <- fmt.Errorf("goroutine %d, request %d: %w", g, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(collect(errs)...); err != nil {
		t.Fatal(err)
	}
}

func collect(ch <-chan error) []error {
	var out []error
	for err := range ch {
		out = append(out, err)
	}
	return out
}

// Package python_test holds the Go side of the Python SDK's tests: the
// conformance kit (sdk/phasetest) run against phases written with it,
// started as the supervisor starts them. The Python SDK's own tests are
// pytest's (make test runs both).
package python_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phasetest"
	"github.com/phased/phased/sdk/tensor"
)

// params are small sizes, so that every check moves little.
var params = map[string]string{
	"context_len": "4", "context_dim": "8", "channels": "3", "frames": "2", "height": "4", "width": "6", "scale": "2",
}

// examples is examples/toy-python, where the Python ports of the built-in
// phases live.
func examples(t *testing.T) string {
	_, file, _, _ := runtimeCaller()
	return filepath.Join(filepath.Dir(file), "..", "..", "examples", "toy-python")
}

// runtimeCaller is where this file is: the tests find the Python files
// beside it.
func runtimeCaller() (uintptr, string, int, bool) { return runtime.Caller(0) }

func needPython(t *testing.T) {
	t.Helper()
	out, err := exec.Command("/usr/bin/python3", "-c", "import grpc, google.protobuf, zmq, numpy, xxhash, cryptography").CombinedOutput()
	if err != nil {
		t.Fatalf("the Python SDK needs /usr/bin/python3 with Debian's python3-grpcio python3-protobuf python3-zmq python3-numpy python3-xxhash python3-cryptography (make deps installs them): %v\n%s", err, out)
	}
}

// TestConformance runs the kit against the three Python phases: the first
// phase of a pipeline (no inputs), a middle one, and the last one (an
// artifact), each over shm and zmq, with hostile peers, and release.
func TestConformance(t *testing.T) {
	needPython(t)
	p, err := model.ParseParams(params)
	if err != nil {
		t.Fatal(err)
	}
	both := []tensor.Spec{model.ContextSpec(p), model.LatentSpec(p)}
	cases := map[string]phasetest.Case{
		"pyencoder":     {Next: both},
		"pytransformer": {Next: both},
		"pydecoder":     {},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c.Params = params
			c.Request = sdk.Request{ID: "c1", Prompt: "a fox", Seed: 3, Steps: 2}
			phasetest.RunBinary(t, filepath.Join(examples(t), "phased-phase-"+name), c)
		})
	}
}

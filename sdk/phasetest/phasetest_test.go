package phasetest

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phase"
	"github.com/phased/phased/sdk/plugintest"
	"github.com/phased/phased/sdk/tensor"
)

// double is a conforming middle phase: x float32[4] in, y = 2x out.
type double struct{ kind sdk.Kind }

func (d double) Info(context.Context) (sdk.Info, error) {
	kind := d.kind
	if kind == "" {
		kind = sdk.KindPhase
	}
	return sdk.Info{Name: "double", Kind: kind, Version: "1", APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (double) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) {
	return []tensor.Spec{{Name: "x", DType: tensor.Float32, Shape: []int64{4}}}, nil
}

func (double) Run(ctx context.Context, _ sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	sdk.ReportProgress(ctx, 1, 1)
	y, err := tensor.New(tensor.Spec{Name: "y", DType: tensor.Float32, Shape: []int64{4}})
	for i, v := range in[0].Float32s() {
		y.Float32s()[i] = 2 * v
	}
	return sdk.Output{Tensors: []tensor.Tensor{y}}, err
}

var doubleCase = Case{
	Request: sdk.Request{ID: "d1", Prompt: "x", Steps: 1},
	Next:    []tensor.Spec{{Name: "y", DType: tensor.Float32, Shape: []int64{4}}},
}

func TestRunPassesAConformingPhase(t *testing.T) {
	Run(t, func() sdk.Phase { return double{} }, doubleCase)
}

// liar wraps the Go runtime of double and breaks one promise of the
// protocol, named by broken.
type liar struct {
	sdk.PhaseControl
	broken string
}

func (l liar) Status(ctx context.Context) (sdk.InstanceStatus, error) {
	st, err := l.PhaseControl.Status(ctx)
	switch l.broken {
	case "dropped":
		st.DroppedFrames = 0
	case "reasonless":
		for i := range st.Rooms {
			st.Rooms[i].Reason = ""
		}
	}
	return st, err
}

func (l liar) Release(ctx context.Context) error {
	if l.broken == "release" {
		return nil
	}
	return l.PhaseControl.Release(ctx)
}

func (l liar) Progress(ctx context.Context, fn func(sdk.Progress)) error {
	switch l.broken {
	case "progress":
		return nil
	case "stages":
		return l.PhaseControl.Progress(ctx, func(p sdk.Progress) {
			if p.Stage != sdk.StageComputing {
				fn(p)
			}
		})
	}
	return l.PhaseControl.Progress(ctx, fn)
}

// brokenEnv names the broken phase TestBrokenPhase checks, in the child
// process TestKitFindsBreakage starts.
const brokenEnv = "PHASETEST_BROKEN"

// TestBrokenPhase runs the kit against a phase broken as brokenEnv says;
// it must fail. It runs only in the child process of TestKitFindsBreakage.
func TestBrokenPhase(t *testing.T) {
	broken := os.Getenv(brokenEnv)
	if broken == "" {
		t.Skip("run by TestKitFindsBreakage")
	}
	c := doubleCase
	c.Settle = time.Second
	var p sdk.Phase = double{}
	switch broken {
	case "kind":
		p = double{kind: sdk.KindPolicy}
	case "outputs":
		c.Next = []tensor.Spec{{Name: "y", DType: tensor.Float32, Shape: []int64{5}}}
	}
	run(t, c, "", func(t *testing.T) instance {
		ctl := plugintest.Dispense[sdk.PhaseControl](t, sdk.PluginPhase, &sdk.PhasePlugin{Impl: liar{phase.New(p, nil), broken}})
		return instance{ctl: ctl, pid: os.Getpid()}
	})
}

// TestKitFindsBreakage: the kit fails a phase for each broken promise, and
// says which.
func TestKitFindsBreakage(t *testing.T) {
	if os.Getenv(brokenEnv) != "" {
		t.Skip("the child process runs TestBrokenPhase only")
	}
	for broken, tc := range map[string]struct{ check, want string }{
		"kind":       {"Info", `Info: kind "policy", want "phase"`},
		"outputs":    {"Transfer/shm", "Run("},
		"dropped":    {"Hostile/Dropped", "dropped frames 0 after 3 bad ones"},
		"reasonless": {"Hostile/Descriptors", "want Failed with a reason"},
		"release":    {"Release", "left after Release"},
		"progress":   {"Transfer/zmq", "the progress stream shows no event"},
		"stages":     {"Transfer/shm", "progress of the Run"},
	} {
		t.Run(broken, func(t *testing.T) {
			want := tc.want
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenPhase$/^"+tc.check+"$", "-test.v")
			cmd.Env = append(os.Environ(), brokenEnv+"="+broken)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), want) {
				t.Fatalf("the kit on a phase broken as %q: %v, output does not fail with %q:\n%s", broken, err, want, out)
			}
		})
	}
}

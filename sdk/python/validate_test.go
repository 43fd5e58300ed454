package python_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phasetest"
	"github.com/phased/phased/sdk/plugintest"
)

// TestValidateParamsAndMetrics asks a Python phase, started as the
// supervisor starts it, to check params before Configure: its answer is
// the Go model's, problem for problem. Once configured, its Status
// carries the Go runtime's figures: the same names, help, kinds and
// labels.
func TestValidateParamsAndMetrics(t *testing.T) {
	needPython(t)
	ctx := context.Background()
	p := plugintest.Start(t, filepath.Join(examples(t), "phased-phase-pytransformer"), sdk.KindPhase)
	py := p.Raw.(sdk.PhaseControl)
	bad := map[string]string{"fraems": "3", "width": "x", "height": "-2", "scale": "4"}
	got, err := py.ValidateParams(ctx, bad)
	if want := model.ParamProblems(bad); err != nil || !slices.Equal(got, want) {
		t.Fatalf("ValidateParams(%v) = %q, %v; want Go's %q", bad, got, err, want)
	}
	if got, err := py.ValidateParams(ctx, params); err != nil || len(got) != 0 {
		t.Fatalf("ValidateParams(%v) = %q, %v; want no problem", params, got, err)
	}

	if err := py.Configure(ctx, sdk.InstanceConfig{Instance: "pytransformer-0", RunDir: plugintest.RunDir(t), Params: params}); err != nil {
		t.Fatal(err)
	}
	goCtl := phasetest.Start(t, transformer.New())
	if err := goCtl.Configure(ctx, sdk.InstanceConfig{Instance: "transformer-0", RunDir: plugintest.RunDir(t), Params: params}); err != nil {
		t.Fatal(err)
	}
	pySt, err := py.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	goSt, err := goCtl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := shape(pySt.Metrics), shape(goSt.Metrics); !slices.Equal(a, b) {
		t.Fatalf("the Python runtime's metrics:\n%q\nthe Go runtime's:\n%q", a, b)
	}
	for _, m := range pySt.Metrics {
		want := 0.0
		if !m.Counter {
			want = -1 // the credit gauges, without limits (protocol.md 2.4)
		}
		if m.Value != want {
			t.Errorf("a new instance reports %s%v = %g; want %g", m.Name, m.Labels, m.Value, want)
		}
	}
}

// shape is what must match between runtimes: each sample's name, kind,
// labels and help, sorted.
func shape(ms []sdk.Metric) []string {
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%s %v counter=%v %q", m.Name, m.Labels, m.Counter, m.Help))
	}
	sort.Strings(out)
	return out
}

package transformer_test

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

func TestInfoAndInputs(t *testing.T) {
	tr := transformer.New()
	info, err := tr.Info(context.Background())
	if err != nil || info.Name != transformer.Name || info.Kind != sdk.KindPhase || info.Version != "0.1.0" || !slices.Equal(info.APIVersions, []int{sdk.PhaseAPIVersion}) {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	if err := tr.Configure(context.Background(), sdk.Config{Params: map[string]string{"frames": "3"}}); err != nil {
		t.Fatal(err)
	}
	in, err := tr.Inputs(context.Background(), sdk.Request{ID: "r"})
	if err != nil {
		t.Fatal(err)
	}
	p := tr.Params()
	if len(in) != 2 || !in[0].Equal(model.ContextSpec(p)) || !in[1].Equal(model.LatentSpec(p)) || in[1].Shape[1] != 3 {
		t.Fatalf("Inputs = %v", in)
	}
}

func TestConfigureErrors(t *testing.T) {
	tests := []struct {
		params  map[string]string
		wantErr string
	}{
		{map[string]string{"steps": "3"}, `transformer: params: steps = "3": unknown param; the known params are`},
		{map[string]string{"height": "-4"}, `transformer: params: height = "-4": must be a positive integer`},
	}
	for _, tt := range tests {
		err := transformer.New().Configure(context.Background(), sdk.Config{Params: tt.params})
		if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
			t.Errorf("Configure(%v) = %v, want %q", tt.params, err, tt.wantErr)
		}
	}
}

// encode runs the encoder phase with params.
func encode(t *testing.T, params map[string]string, req sdk.Request) []tensor.Tensor {
	t.Helper()
	e := encoder.New()
	if err := e.Configure(context.Background(), sdk.Config{Params: params}); err != nil {
		t.Fatal(err)
	}
	out, err := e.Run(context.Background(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out.Tensors
}

func TestRunMatchesModelAndKeepsInputs(t *testing.T) {
	req := sdk.Request{ID: "r", Prompt: "waves", Seed: 5, Steps: 7}
	in := encode(t, nil, req)
	before := [][]byte{bytes.Clone(in[0].Data), bytes.Clone(in[1].Data)}

	out, err := transformer.New().Run(context.Background(), req, in)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if !bytes.Equal(in[i].Data, before[i]) {
			t.Fatalf("Run modified input %d (%s)", i, in[i].Name)
		}
	}
	if len(out.Tensors) != 2 || out.Artifact != nil || !out.Tensors[1].Spec.Equal(model.LatentSpec(model.DefaultParams())) {
		t.Fatalf("output %+v, want the context and a latent", out)
	}
	if !out.Tensors[0].Spec.Equal(in[0].Spec) || !bytes.Equal(out.Tensors[0].Data, in[0].Data) {
		t.Fatal("the context is not passed on as it came")
	}
	if &out.Tensors[1].Data[0] == &in[1].Data[0] {
		t.Fatal("output latent shares memory with the input")
	}
	p := model.DefaultParams()
	cond, latent := model.Encode(p, req.Prompt, req.Seed)
	if err := model.Denoise(context.Background(), p, cond, latent, req.Steps); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out.Tensors[1].Float32s(), latent) {
		t.Fatal("output differs from model.Denoise")
	}
}

func TestRunBadInputs(t *testing.T) {
	req := sdk.Request{ID: "r", Prompt: "p", Seed: 1, Steps: 2}
	good := encode(t, nil, req)
	other := encode(t, map[string]string{"frames": "2"}, req)
	short := good[1]
	short.Data = short.Data[:len(short.Data)-4]
	tests := []struct {
		name    string
		in      []tensor.Tensor
		wantErr string
	}{
		{"none", nil, "transformer: input tensors do not match the params: got 0 input tensors, want 2"},
		{"swapped", []tensor.Tensor{good[1], good[0]}, "input 0 is latent:float32[4 8 24 32], want context:float32[16 64]"},
		{"other params", []tensor.Tensor{other[0], other[1]}, "input 1 is latent:float32[4 2 24 32], want latent:float32[4 8 24 32]; give every phase of the pipeline the same params"},
		{"short data", []tensor.Tensor{good[0], short}, "input 1: bad tensor spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := transformer.New().Run(context.Background(), req, tt.in)
			if !errors.Is(err, model.ErrBadInput) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want model.ErrBadInput containing %q", err, tt.wantErr)
			}
		})
	}
	req.Steps = -1
	if _, err := transformer.New().Run(context.Background(), req, good); !errors.Is(err, model.ErrBadSteps) {
		t.Fatalf("steps -1: err = %v, want model.ErrBadSteps", err)
	}
}

func TestRunCancel(t *testing.T) {
	req := sdk.Request{ID: "r", Prompt: "p", Seed: 1, Steps: 1 << 30}
	in := encode(t, nil, req)
	ctx, cancel := context.WithCancel(context.Background())
	timer := time.AfterFunc(20*time.Millisecond, cancel)
	defer timer.Stop()
	defer cancel()
	_, err := transformer.New().Run(ctx, req, in)
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "transformer: ") {
		t.Fatalf("err = %v, want transformer: context canceled", err)
	}
}

// memCheckpointer keeps a Run's saves in memory, and resumes from the one
// it was given.
type memCheckpointer struct {
	every  int
	saved  map[int][]byte
	from   int
	state  []tensor.Tensor
	resume []int // the totals Resume was called with
}

func (c *memCheckpointer) Save(_ context.Context, step, total int, state []tensor.Tensor) (bool, error) {
	if step%c.every != 0 || step >= total {
		return false, nil
	}
	if len(state) != 1 {
		return false, errors.New("want the latent alone")
	}
	c.saved[step] = bytes.Clone(state[0].Data)
	return true, nil
}

func (c *memCheckpointer) Resume(_ context.Context, total int) (int, []tensor.Tensor) {
	c.resume = append(c.resume, total)
	return c.from, c.state
}

// TestRunResumes: the latent saved after step 15 of 20 and resumed from
// gives the same bytes as the uninterrupted Run; a state that does not
// fit the latent is not resumed from.
func TestRunResumes(t *testing.T) {
	req := sdk.Request{ID: "r", Prompt: "waves", Seed: 5, Steps: 20}
	in := encode(t, nil, req)
	first := &memCheckpointer{every: 5, saved: map[int][]byte{}}
	whole, err := transformer.New().Run(sdk.WithCheckpointer(context.Background(), first), req, in)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.saved) != 3 || first.saved[5] == nil || first.saved[10] == nil || first.saved[15] == nil || !slices.Equal(first.resume, []int{20}) {
		t.Fatalf("saved after steps %v, resumed with %v; want 5, 10, 15 and one Resume(20)", slices.Sorted(maps.Keys(first.saved)), first.resume)
	}
	spec := model.LatentSpec(model.DefaultParams())
	for _, from := range []int{5, 15} {
		retry := &memCheckpointer{every: 5, saved: map[int][]byte{}, from: from, state: []tensor.Tensor{{Spec: spec, Data: bytes.Clone(first.saved[from])}}}
		out, err := transformer.New().Run(sdk.WithCheckpointer(context.Background(), retry), req, in)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Tensors[1].Data, whole.Tensors[1].Data) {
			t.Fatalf("resumed after step %d: the latent differs from the uninterrupted Run's", from)
		}
		if from == 15 && len(retry.saved) != 0 {
			t.Fatalf("resumed after 15: saved again after %v", slices.Sorted(maps.Keys(retry.saved)))
		}
	}
	// A state of another shape is not resumed from: the Run starts over.
	odd := &memCheckpointer{every: 5, saved: map[int][]byte{}, from: 15, state: []tensor.Tensor{{Spec: tensor.Spec{Name: "latent", DType: tensor.Float32, Shape: []int64{1}}, Data: make([]byte, 4)}}}
	out, err := transformer.New().Run(sdk.WithCheckpointer(context.Background(), odd), req, in)
	if err != nil || !bytes.Equal(out.Tensors[1].Data, whole.Tensors[1].Data) || len(odd.saved) != 3 {
		t.Fatalf("with an odd state: %v, saved %d", err, len(odd.saved))
	}
}

// TestRunBatch: a batch of requests with other steps, one resuming from
// its checkpoint and one cancelled, gives each the latent Run gives it,
// and the cancelled one its error alone.
func TestRunBatch(t *testing.T) {
	reqs := []sdk.Request{{ID: "a", Prompt: "a", Seed: 1, Steps: 7}, {ID: "b", Prompt: "b", Seed: 2, Steps: 20}, {ID: "c", Prompt: "c", Seed: 3, Steps: 3}, {ID: "d", Prompt: "d", Seed: 4, Steps: 5}}
	tr := transformer.New()
	var want [][]byte
	var items []sdk.BatchItem
	for _, req := range reqs {
		in := encode(t, nil, req)
		out, err := tr.Run(context.Background(), req, in)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, out.Tensors[1].Data)
		items = append(items, sdk.BatchItem{Ctx: context.Background(), Request: req, Inputs: in})
	}
	// b resumes after step 10 of its 20, from the latent a Run saved.
	saver := &memCheckpointer{every: 5, saved: map[int][]byte{}}
	if _, err := tr.Run(sdk.WithCheckpointer(context.Background(), saver), reqs[1], items[1].Inputs); err != nil {
		t.Fatal(err)
	}
	spec := model.LatentSpec(model.DefaultParams())
	resume := &memCheckpointer{every: 5, saved: map[int][]byte{}, from: 10, state: []tensor.Tensor{{Spec: spec, Data: saver.saved[10]}}}
	items[1].Ctx = sdk.WithCheckpointer(context.Background(), resume)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	items[3].Ctx = cancelled
	res := tr.RunBatch(context.Background(), items)
	if len(res) != 4 {
		t.Fatalf("%d results", len(res))
	}
	for i := range 3 {
		if res[i].Err != nil || !bytes.Equal(res[i].Output.Tensors[1].Data, want[i]) {
			t.Fatalf("item %s: %v, or its latent differs from Run's", reqs[i].ID, res[i].Err)
		}
	}
	if !errors.Is(res[3].Err, context.Canceled) {
		t.Fatalf("the cancelled item: %v", res[3].Err)
	}
	if len(resume.saved) != 1 || resume.saved[15] == nil {
		t.Fatalf("the resumed item saved after %v, want 15 alone", slices.Sorted(maps.Keys(resume.saved)))
	}
}

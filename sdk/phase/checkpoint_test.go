package phase

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/checkpoint"
	"github.com/phased/phased/sdk/tensor"
)

// counter is a first-and-last phase whose state is a sum: each step i
// adds i; it resumes from its checkpoint and saves after every step. Its
// artifact's path says where it began and the sum it ended with; a
// prompt "stop N" makes it fail after step N (its instance "dies").
type counter struct{}

func (counter) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "counter", Kind: sdk.KindPhase, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (counter) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) { return nil, nil }

func (counter) Run(ctx context.Context, req sdk.Request, _ []tensor.Tensor) (sdk.Output, error) {
	var stop int
	fmt.Sscanf(req.Prompt, "stop %d", &stop)
	state := tensor.Tensor{Spec: tensor.Spec{Name: "sum", DType: tensor.Int64, Shape: []int64{1}}, Data: make([]byte, 8)}
	from, saved := sdk.Resume(ctx, req.Steps)
	if from > 0 {
		copy(state.Data, saved[0].Data)
	}
	for i := from + 1; i <= req.Steps; i++ {
		binary.LittleEndian.PutUint64(state.Data, binary.LittleEndian.Uint64(state.Data)+uint64(i))
		if _, err := sdk.Checkpoint(ctx, i, req.Steps, state); err != nil {
			return sdk.Output{}, err
		}
		sdk.ReportProgress(ctx, i, req.Steps)
		if i == stop {
			return sdk.Output{}, fmt.Errorf("stopped after step %d", i)
		}
	}
	return sdk.Output{Artifact: &sdk.Artifact{Path: fmt.Sprintf("from %d sum %d", from, binary.LittleEndian.Uint64(state.Data))}}, nil
}

// TestRunCheckpoints: through the runtime, a Run saves every 5 steps
// into the file the request names; the next Run of the request resumes
// after step 15 with the same result as an uninterrupted one, and says
// so in its progress; a checkpoint of another request or total is not
// resumed from; without a checkpoint spec nothing is written.
func TestRunCheckpoints(t *testing.T) {
	ctx := context.Background()
	r := configured(t, counter{})
	dir := t.TempDir()
	path := filepath.Join(dir, "counter.ckpt")
	spec := sdk.CheckpointSpec{Path: path, Every: 5}
	run := func(id, prompt string, steps int, cs sdk.CheckpointSpec) (string, []string, error) {
		sub, _ := r.progress.subscribe()
		defer r.progress.unsubscribe(sub)
		res, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: id, Prompt: prompt, Steps: steps, Checkpoint: cs}})
		var got []string
		for len(sub.events) > 0 {
			if p := <-sub.events; p.Stage == sdk.StageComputing {
				got = append(got, fmt.Sprintf("%d/%d r%d", p.Done, p.Total, p.Resumed))
			}
		}
		if err != nil {
			return "", got, err
		}
		return res.Artifact.Path, got, nil
	}
	whole, _, err := run("w", "", 20, sdk.CheckpointSpec{})
	if err != nil || whole != "from 0 sum 210" {
		t.Fatalf("uninterrupted: %q, %v", whole, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("without a checkpoint spec the Run wrote %d files", len(entries))
	}

	if _, _, err := run("r1", "stop 17", 20, spec); err == nil {
		t.Fatal("the Run that stops after 17 succeeded")
	}
	h, state, err := checkpoint.Read(path)
	if err != nil || h.Step != 15 || h.Total != 20 || h.Request != "r1" || binary.LittleEndian.Uint64(state[0].Data) != 120 {
		t.Fatalf("checkpoint after the stop: %+v, %v", h, err)
	}
	got, events, err := run("r1", "", 20, spec)
	if err != nil || got != "from 15 sum 210" {
		t.Fatalf("the retry: %q, %v; want it to resume after step 15 with the same sum", got, err)
	}
	if want := []string{"0/1 r0", "16/20 r15", "17/20 r15", "18/20 r15", "19/20 r15", "20/20 r15"}; !slices.Equal(events, want) {
		t.Fatalf("the retry's computing events %v, want %v", events, want)
	}

	// Another request, or another total, starts over.
	for _, c := range []struct {
		id    string
		steps int
		want  string
	}{{"r2", 20, "from 0 sum 210"}, {"r1", 30, "from 0 sum 465"}} {
		if got, _, err := run(c.id, "", c.steps, spec); err != nil || got != c.want {
			t.Fatalf("%s of %d steps with r1's checkpoint of 20: %q, %v, want %q", c.id, c.steps, got, err, c.want)
		}
	}
	// A damaged file is not resumed from either.
	b, _ := os.ReadFile(path)
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _, err := run("r1", "", 30, spec); err != nil || got != "from 0 sum 465" {
		t.Fatalf("with a damaged checkpoint: %q, %v", got, err)
	}
	// Into a directory that is gone (the request ended): the Run fails
	// with the save's error here (this phase returns it), no file made.
	gone := sdk.CheckpointSpec{Path: filepath.Join(dir, "gone", "c.ckpt"), Every: 5}
	if _, _, err := run("r3", "", 20, gone); err == nil {
		t.Fatal("a save into a missing directory succeeded")
	}
	if _, err := os.Stat(filepath.Dir(gone.Path)); err == nil {
		t.Fatal("the save made the missing directory")
	}
}

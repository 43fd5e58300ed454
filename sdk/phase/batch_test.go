package phase

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// batchRec is a first-and-last phase that batches: it records the ids
// of every batch it runs, fails the request "bad", and holds a batch
// with the request "hold" until gate is closed.
type batchRec struct {
	limits  sdk.BatchLimits
	gate    chan struct{}
	holding chan struct{} // closed when the "hold" batch has started
	mu      sync.Mutex
	batches [][]string
	alone   []string // Run calls (batches of one)
}

func (b *batchRec) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "batchrec", Kind: sdk.KindPhase, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (b *batchRec) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) { return nil, nil }

func (b *batchRec) Run(ctx context.Context, req sdk.Request, _ []tensor.Tensor) (sdk.Output, error) {
	b.mu.Lock()
	b.alone = append(b.alone, req.ID)
	b.mu.Unlock()
	return b.one(ctx, req)
}

func (b *batchRec) one(ctx context.Context, req sdk.Request) (sdk.Output, error) {
	if req.ID == "hold" {
		close(b.holding)
		<-b.gate
	}
	if req.ID == "bad" {
		return sdk.Output{}, errors.New("bad request")
	}
	sdk.ReportProgress(ctx, 1, 1)
	return sdk.Output{Artifact: &sdk.Artifact{Path: "art-" + req.ID}}, nil
}

func (b *batchRec) BatchLimits() sdk.BatchLimits { return b.limits }

func (b *batchRec) RunBatch(_ context.Context, items []sdk.BatchItem) []sdk.BatchResult {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.Request.ID
	}
	b.mu.Lock()
	b.batches = append(b.batches, ids)
	b.mu.Unlock()
	res := make([]sdk.BatchResult, len(items))
	for i, it := range items {
		res[i].Output, res[i].Err = b.one(it.Ctx, it.Request)
	}
	return res
}

// TestBatching: Runs that reach an instance together are computed in
// batches of at most max_size, each Run answering for its own request
// (an item's error fails it alone); Runs gather while a batch runs; one
// cancelled while it waits leaves without being computed; the config's
// size 1 turns batching off; Info lists the feature.
func TestBatching(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := &batchRec{limits: sdk.BatchLimits{MaxSize: 3, MaxWait: 20 * time.Millisecond}, gate: make(chan struct{}), holding: make(chan struct{})}
	r := configured(t, p)
	if info, _ := r.Info(ctx); !info.Has(sdk.FeatureBatch) {
		t.Fatalf("features %v, want %q", info.Features, sdk.FeatureBatch)
	}
	run := func(id string, rctx context.Context) (string, error) {
		res, err := r.Run(rctx, sdk.RunSpec{Request: sdk.Request{ID: id}})
		if err != nil {
			return "", err
		}
		return res.Artifact.Path, nil
	}
	// "hold" runs alone and holds the loop; meanwhile 7 Runs gather,
	// one of them cancelled while it waits.
	held := make(chan error, 1)
	go func() { _, err := run("hold", ctx); held <- err }()
	<-p.holding
	ids := []string{"a", "b", "bad", "c", "d", "e"}
	var wg sync.WaitGroup
	got := make([]string, len(ids))
	errs := make([]error, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() { defer wg.Done(); got[i], errs[i] = run(id, ctx) }()
	}
	gone, leave := context.WithCancel(ctx)
	left := make(chan error, 1)
	go func() { _, err := run("gone", gone); left <- err }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		r.batch.mu.Lock()
		n := len(r.batch.pending)
		r.batch.mu.Unlock()
		if n == len(ids)+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d Runs pending, want %d", n, len(ids)+1)
		}
	}
	leave()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("the Run cancelled while it waited: %v", err)
	}
	close(p.gate)
	wg.Wait()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		switch {
		case id == "bad" && (errs[i] == nil || errs[i].Error() != "bad request"):
			t.Errorf("bad: %v, want its own error", errs[i])
		case id != "bad" && (errs[i] != nil || got[i] != "art-"+id):
			t.Errorf("%s: %q, %v", id, got[i], errs[i])
		}
	}
	var all []string
	for _, b := range p.batches {
		if len(b) > 3 {
			t.Errorf("a batch of %d: %v", len(b), b)
		}
		all = append(all, b...)
	}
	all = append(all, p.alone...)
	sort.Strings(all)
	if want := []string{"a", "b", "bad", "c", "d", "e", "hold"}; !slices.Equal(all, want) {
		t.Fatalf("computed %v (batches %v, alone %v), want each of %v once", all, p.batches, p.alone, want)
	}
	if len(p.batches) != 2 {
		t.Errorf("batches %v: want the 6 Runs that gathered behind hold in 2 batches of 3", p.batches)
	}

	// batch { max_size = 1 }: no batching, Run alone.
	p1 := &batchRec{limits: sdk.BatchLimits{MaxSize: 4, MaxWait: time.Second}}
	r1 := New(p1, nil)
	if err := r1.Configure(ctx, sdk.InstanceConfig{Instance: "b-1", RunDir: t.TempDir(), Batch: sdk.BatchLimits{MaxSize: 1}}); err != nil {
		t.Fatal(err)
	}
	defer r1.Release(ctx)
	if r1.batch != nil {
		t.Fatal("max size 1 made a batcher")
	}
	// A size for a phase that does not batch is refused.
	err := New(stepper{}, nil).Configure(ctx, sdk.InstanceConfig{Instance: "s-1", RunDir: t.TempDir(), Batch: sdk.BatchLimits{MaxSize: 4}})
	if !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), "the phase does not batch") {
		t.Fatalf("a batch size for a phase that does not batch: %v", err)
	}
}

// TestBatchRelease: Release fails the Runs still waiting for a batch and
// stops the loop.
func TestBatchRelease(t *testing.T) {
	ctx := context.Background()
	p := &batchRec{limits: sdk.BatchLimits{MaxSize: 8, MaxWait: time.Hour}}
	r := New(p, nil)
	if err := r.Configure(ctx, sdk.InstanceConfig{Instance: "b-2", RunDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "w"}}); done <- err }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		r.batch.mu.Lock()
		n := len(r.batch.pending)
		r.batch.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the Run never joined the batch")
		}
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Fatal("a Run waiting for its batch succeeded after Release")
	}
	select {
	case <-r.batch.done:
	default:
		t.Fatal("the batch loop still runs after Release")
	}
}

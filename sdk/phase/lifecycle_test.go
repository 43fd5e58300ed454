package phase

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// stepper is a first-and-last phase that reports progress in steps,
// calls hook (if set) and writes no file; the prompt "fail" fails it.
type stepper struct {
	steps int
	hook  func(context.Context, sdk.Request)
}

func (stepper) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "stepper", Kind: sdk.KindPhase, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (stepper) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) { return nil, nil }

func (s stepper) Run(ctx context.Context, req sdk.Request, _ []tensor.Tensor) (sdk.Output, error) {
	if s.hook != nil {
		s.hook(ctx, req)
	}
	for i := range s.steps {
		sdk.ReportProgress(ctx, i+1, s.steps)
	}
	if req.Prompt == "fail" {
		return sdk.Output{}, errors.New("boom")
	}
	return sdk.Output{Artifact: &sdk.Artifact{Path: req.ID}}, nil
}

// loader is a stepper whose Load waits for the test.
type loader struct {
	stepper
	started chan struct{} // closed when Load starts
	finish  chan error    // Load returns what it receives
	sawDone chan struct{} // closed when Load returns because its ctx ended
	panics  bool          // Load panics
}

func newLoader() *loader {
	return &loader{started: make(chan struct{}), finish: make(chan error, 1), sawDone: make(chan struct{})}
}

func (l *loader) Load(ctx context.Context) error {
	close(l.started)
	if l.panics {
		panic("no GPU")
	}
	select {
	case err := <-l.finish:
		return err
	case <-ctx.Done():
		close(l.sawDone)
		return ctx.Err()
	}
}

var (
	_ sdk.Phase  = stepper{}
	_ sdk.Loader = (*loader)(nil)
)

// configured returns a runtime around p, configured in a fresh run
// directory and released when the test ends.
func configured(t *testing.T, p sdk.Phase) *Runtime {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "phased-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := New(p, nil)
	if err := r.Configure(context.Background(), sdk.InstanceConfig{Instance: "l-0", RunDir: dir}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Release(context.Background()) })
	return r
}

func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// TestReadyWaitsForLoad: Configure returns while Load runs; until Load
// returns, Ready blocks and the instance refuses requests; then it takes
// them.
func TestReadyWaitsForLoad(t *testing.T) {
	ctx := context.Background()
	l := newLoader()
	r := configured(t, l) // Configure has returned with Load still blocked
	<-l.started
	if err := r.Ready(cancelled()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ready while loading, ctx cancelled: %v", err)
	}
	const loading = "instance l-0 is still loading; call Ready first"
	if _, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: 1, Role: sdk.RoleSender}); err == nil || err.Error() != loading {
		t.Fatalf("OpenRoom while loading: %v", err)
	}
	if _, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "r"}}); err == nil || err.Error() != loading {
		t.Fatalf("Run while loading: %v", err)
	}
	if _, err := r.Status(ctx); err != nil {
		t.Fatalf("Status while loading: %v", err)
	}
	ready := make(chan error, 1)
	go func() { ready <- r.Ready(ctx) }()
	l.finish <- nil
	if err := <-ready; err != nil {
		t.Fatalf("Ready after Load: %v", err)
	}
	if err := r.Ready(ctx); err != nil {
		t.Fatalf("second Ready: %v", err)
	}
	if _, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: 1, Role: sdk.RoleSender}); err != nil {
		t.Fatalf("OpenRoom after Load: %v", err)
	}
	if a, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "r"}}); err != nil || a.Artifact == nil || a.Artifact.Path != "r" {
		t.Fatalf("Run after Load: %v, %v", a, err)
	}
}

func TestReadyErrors(t *testing.T) {
	ctx := context.Background()

	r := New(newLoader(), nil)
	if err := r.Ready(ctx); !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), "not configured") {
		t.Fatalf("Ready before Configure: %v", err)
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Ready(ctx); !errors.Is(err, transfer.ErrReleased) {
		t.Fatalf("Ready after Release: %v", err)
	}

	// A failed Load: Ready returns its error every time; requests are
	// refused with it.
	l := newLoader()
	weights := errors.New("weights missing at /w")
	l.finish <- weights
	r = configured(t, l)
	for range 2 {
		if err := r.Ready(ctx); !errors.Is(err, weights) || err.Error() != "loading: weights missing at /w" {
			t.Fatalf("Ready after a failed Load: %v", err)
		}
	}
	if _, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "r"}}); !errors.Is(err, weights) || err.Error() != "instance l-0 failed to load: weights missing at /w" {
		t.Fatalf("Run after a failed Load: %v", err)
	}

	// A panicking Load fails the load, not the process.
	l = newLoader()
	l.panics = true
	r = configured(t, l)
	if err := r.Ready(ctx); err == nil || err.Error() != "loading: the phase panicked: no GPU" {
		t.Fatalf("Ready after a panicking Load: %v", err)
	}

	// No Loader: ready right after Configure.
	r = configured(t, stepper{})
	if err := r.Ready(cancelled()); err != nil {
		t.Fatalf("Ready without Loader: %v", err)
	}
}

// TestReleaseCancelsLoad: Release cancels Load's ctx and waits for it to
// return; a Load that ignores its ctx bounds Release by Release's ctx.
func TestReleaseCancelsLoad(t *testing.T) {
	ctx := context.Background()
	l := newLoader()
	r := configured(t, l)
	<-l.started
	ready := make(chan error, 1)
	go func() { ready <- r.Ready(ctx) }()
	if err := r.Release(ctx); err != nil {
		t.Fatalf("Release during Load: %v", err)
	}
	select {
	case <-l.sawDone: // Release returned after Load saw its ctx end
	default:
		t.Fatal("Release returned before Load saw its ctx cancelled")
	}
	if err := <-ready; !errors.Is(err, transfer.ErrReleased) {
		t.Fatalf("Ready waiting across Release: %v", err)
	}

	// Load ignores its ctx: Release gives up when its own ctx ends.
	stubborn := &loader{started: make(chan struct{}), finish: make(chan error)}
	r = configured(t, &ignoresCtx{stubborn})
	<-stubborn.started
	err := r.Release(cancelled())
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "release: the phase's Load has not returned") {
		t.Fatalf("Release with a stuck Load: %v", err)
	}
	stubborn.finish <- nil // let the Load goroutine end
}

// ignoresCtx is a loader whose Load waits for finish only.
type ignoresCtx struct{ *loader }

func (l *ignoresCtx) Load(context.Context) error {
	close(l.started)
	return <-l.finish
}

// TestProgressDropsOldest: a stream that is not read keeps the newest
// events and counts the ones it dropped; publishing never blocks.
func TestProgressDropsOldest(t *testing.T) {
	var h progressHub
	s, err := h.subscribe()
	if err != nil {
		t.Fatal(err)
	}
	run := &runReporter{hub: &h, request: "r"}
	const extra = 10
	for i := range progressBuffer + extra {
		run.publish(sdk.StageComputing, i, progressBuffer+extra)
	}
	if got := s.dropped.Load(); got != extra || h.dropped.Load() != extra {
		t.Fatalf("dropped %d (hub %d), want %d", got, h.dropped.Load(), extra)
	}
	var got []int
	h.close()
	s.follow(context.Background(), func(p sdk.Progress) { got = append(got, p.Done) })
	if len(got) != progressBuffer || got[0] != extra || got[len(got)-1] != progressBuffer+extra-1 {
		t.Fatalf("kept %d events from %v to %v, want the newest %d", len(got), got[0], got[len(got)-1], progressBuffer)
	}
	if _, err := h.subscribe(); !errors.Is(err, transfer.ErrReleased) {
		t.Fatalf("subscribe after close: %v", err)
	}
}

// TestProgressSnapshot: a new stream starts with the latest event of every
// Run in progress, oldest Run first; finished Runs are not in it.
func TestProgressSnapshot(t *testing.T) {
	var h progressHub
	a := &runReporter{hub: &h, request: "a", inRoom: 3, outRoom: 4}
	b := &runReporter{hub: &h, request: "b"}
	c := &runReporter{hub: &h, request: "c"}
	a.publish(sdk.StageWaiting, 0, 0)
	b.publish(sdk.StageWaiting, 0, 0)
	c.publish(sdk.StageWaiting, 0, 0)
	a.publish(sdk.StageComputing, 2, 5)
	c.publish(sdk.StageFinished, 0, 0)
	s, err := h.subscribe()
	if err != nil {
		t.Fatal(err)
	}
	b.publish(sdk.StageSending, 0, 0)
	h.close()
	var got []string
	s.follow(context.Background(), func(p sdk.Progress) { got = append(got, fmt.Sprint(p)) })
	if want := "[{a computing 2 5 3 4 0} {b waiting 0 0 0 0 0} {b sending 0 0 0 0 0}]"; fmt.Sprint(got) != want {
		t.Fatalf("events %v, want %s", got, want)
	}
}

// TestRunProgress: every Run the instance accepts goes waiting, computing
// (0 of 1, then the phase's reports, or 1 of 1 when it reports none),
// finished; a stream opened during a Run starts with that Run's latest
// event; reports after Run returned are ignored; the stream ends at
// Release with the events it holds delivered, and no goroutine is left.
func TestRunProgress(t *testing.T) {
	ctx := context.Background()
	base := runtime.NumGoroutine()
	entered, gate := make(chan context.Context, 1), make(chan struct{})
	r := configured(t, stepper{steps: 2, hook: func(ctx context.Context, req sdk.Request) {
		if req.ID == "ok" {
			entered <- ctx
			<-gate
		}
	}})
	okDone := make(chan error, 1)
	go func() {
		_, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "ok"}})
		okDone <- err
	}()
	late := <-entered // "ok" is computing 0 of 1

	var (
		mu     sync.Mutex
		events []string
	)
	first := make(chan struct{})
	streamErr := make(chan error, 1)
	go func() {
		streamErr <- r.Progress(ctx, func(p sdk.Progress) {
			mu.Lock()
			defer mu.Unlock()
			if events = append(events, fmt.Sprint(p)); len(events) == 1 {
				close(first)
			}
		})
	}()
	<-first // subscribed: the snapshot has arrived
	close(gate)
	if err := <-okDone; err != nil {
		t.Fatal(err)
	}
	sdk.ReportProgress(late, 9, 9) // after Run returned: ignored
	if _, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "bad", Prompt: "fail"}}); err == nil || err.Error() != "boom" {
		t.Fatalf("Run of a failing phase: %v", err)
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-streamErr; err != nil {
		t.Fatalf("Progress at Release: %v", err)
	}
	want := "[{ok computing 0 1 0 0 0} {ok computing 1 2 0 0 0} {ok computing 2 2 0 0 0} {ok finished 0 0 0 0 0} " +
		"{bad waiting 0 0 0 0 0} {bad computing 0 1 0 0 0} {bad computing 1 2 0 0 0} {bad computing 2 2 0 0 0} {bad finished 0 0 0 0 0}]"
	if fmt.Sprint(events) != want {
		t.Fatalf("events\n%v\nwant\n%s", events, want)
	}
	if err := r.Progress(ctx, func(sdk.Progress) {}); !errors.Is(err, transfer.ErrReleased) {
		t.Fatalf("Progress after Release: %v", err)
	}
	waitGoroutines(t, base)

	// A phase that reports nothing shows 1 of 1 when it succeeds.
	r = configured(t, stepper{})
	sub, _ := r.progress.subscribe()
	if _, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "p"}}); err != nil {
		t.Fatal(err)
	}
	r.progress.close()
	var got []string
	sub.follow(ctx, func(p sdk.Progress) { got = append(got, fmt.Sprint(p)) })
	if want := "[{p waiting 0 0 0 0 0} {p computing 0 1 0 0 0} {p computing 1 1 0 0 0} {p finished 0 0 0 0 0}]"; fmt.Sprint(got) != want {
		t.Fatalf("events %v, want %s", got, want)
	}
}

// TestProgressStreamsEnd: streams end with their ctx, and none leaves a
// goroutine behind.
func TestProgressStreamsEnd(t *testing.T) {
	r := configured(t, stepper{})
	base := runtime.NumGoroutine()
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 3)
	for range 3 {
		wg.Go(func() { errs <- r.Progress(ctx, func(sdk.Progress) {}) })
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Progress when its ctx ended: %v", err)
		}
	}
	waitGoroutines(t, base)
}

// waitGoroutines fails the test unless the number of goroutines comes
// back to base within a few seconds (others may still be winding down).
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

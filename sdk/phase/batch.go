package phase

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// batcher gathers the Runs of a phase that batches (sdk.BatchPhase) into
// batches and runs them, one at a time, on its one goroutine
// (docs/protocol.md 2.5). A Run whose inputs are there joins the pending
// list; the loop takes up to MaxSize of them once MaxSize are pending or
// MaxWait has passed since the first of them joined, and runs them while
// the next batch gathers. Release stops it.
type batcher struct {
	phase  sdk.BatchPhase
	limits sdk.BatchLimits
	r      *Runtime // its runPhase, logger and compute time

	// batches counts the batches of two Runs or more, runs the Runs in
	// them (Status's batches_total and batched_runs_total).
	batches, runs atomic.Uint64

	mu      sync.Mutex
	pending []*batchItem
	stopped bool
	wake    chan struct{} // a send (never blocking) when a Run joins or at stop
	ctx     context.Context
	stop    context.CancelFunc
	done    chan struct{} // closed when the loop has returned
}

// batchItem is one Run waiting in, or computed by, a batch.
type batchItem struct {
	item   sdk.BatchItem
	rep    *runReporter
	joined time.Time
	taken  bool          // in a batch: the Run waits for it to end
	ended  chan struct{} // closed once res is set
	res    sdk.BatchResult
}

// startBatcher starts the loop of phase p with limits; close stops it.
func startBatcher(p sdk.BatchPhase, limits sdk.BatchLimits, r *Runtime) *batcher {
	ctx, stop := context.WithCancel(context.Background())
	b := &batcher{phase: p, limits: limits, r: r, wake: make(chan struct{}, 1), ctx: ctx, stop: stop, done: make(chan struct{})}
	go b.loop()
	return b
}

// compute runs one Run's request in a batch and returns its outcome. It
// returns ctx's error at once when ctx ends before a batch took the Run;
// once taken, it waits for the batch, which holds its inputs.
func (b *batcher) compute(ctx context.Context, req sdk.Request, in []tensor.Tensor, rep *runReporter) (sdk.Output, error) {
	it := &batchItem{item: sdk.BatchItem{Ctx: ctx, Request: req, Inputs: in}, rep: rep, joined: time.Now(), ended: make(chan struct{})}
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return sdk.Output{}, transfer.ErrReleased
	}
	b.pending = append(b.pending, it)
	b.mu.Unlock()
	b.poke()
	select {
	case <-it.ended:
		return it.res.Output, it.res.Err
	case <-ctx.Done():
	}
	b.mu.Lock()
	if !it.taken {
		for i, p := range b.pending {
			if p == it {
				b.pending = append(b.pending[:i], b.pending[i+1:]...)
				break
			}
		}
		b.mu.Unlock()
		return sdk.Output{}, ctx.Err()
	}
	b.mu.Unlock()
	<-it.ended
	return it.res.Output, it.res.Err
}

func (b *batcher) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// loop takes batches and runs them until close.
func (b *batcher) loop() {
	defer close(b.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		batch, wait := b.take()
		switch {
		case batch != nil:
			// Even once stopped: its Runs wait for it (their contexts,
			// and the batch's, are cancelled then, so it ends soon).
			b.runBatch(batch)
			continue
		case b.ctx.Err() != nil:
			return
		}
		var due <-chan time.Time
		if wait > 0 {
			timer.Reset(wait)
			due = timer.C
		}
		select {
		case <-b.wake:
		case <-due:
		case <-b.ctx.Done():
		}
		timer.Stop() // no stale tick after Stop (Go 1.23 timers)
	}
}

// take returns the next batch when one is due (MaxSize pending, or the
// first pending joined MaxWait ago), marking its Runs taken; otherwise
// how long to wait for it (0: until a Run joins).
func (b *batcher) take() ([]*batchItem, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.pending) == 0 {
		return nil, 0
	}
	if wait := time.Until(b.pending[0].joined.Add(b.limits.MaxWait)); len(b.pending) < b.limits.MaxSize && wait > 0 {
		return nil, wait
	}
	n := min(len(b.pending), b.limits.MaxSize)
	batch := append([]*batchItem(nil), b.pending[:n]...)
	b.pending = append(b.pending[:0], b.pending[n:]...)
	for _, it := range batch {
		it.taken = true
	}
	return batch, 0
}

// runBatch runs one batch: Run alone for a batch of one, else RunBatch,
// whose context ends when every item's has (or at release). A panic or a
// wrong number of results fails every Run of the batch.
func (b *batcher) runBatch(batch []*batchItem) {
	for _, it := range batch {
		it.rep.startComputing()
	}
	runtime.Gosched() // let the "computing" events go first (see run)
	if len(batch) > 1 {
		b.batches.Add(1)
		b.runs.Add(uint64(len(batch)))
	}
	began := time.Now()
	results := b.results(batch)
	b.r.computeNanos.Add(int64(time.Since(began)))
	for i, it := range batch {
		it.res = results[i]
		it.rep.stopComputing(it.res.Err == nil)
		close(it.ended)
	}
}

func (b *batcher) results(batch []*batchItem) (results []sdk.BatchResult) {
	if len(batch) == 1 {
		it := batch[0]
		out, err := b.r.runPhase(it.item.Ctx, it.item.Request, it.item.Inputs)
		return []sdk.BatchResult{{Output: out, Err: err}}
	}
	// The batch's context ends when every item's has, or at release.
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	var live atomic.Int32
	live.Store(int32(len(batch)))
	items := make([]sdk.BatchItem, len(batch))
	for i, it := range batch {
		items[i] = it.item
		stop := context.AfterFunc(it.item.Ctx, func() {
			if live.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	fail := func(err error) []sdk.BatchResult {
		rs := make([]sdk.BatchResult, len(batch))
		for i := range rs {
			rs[i].Err = err
		}
		return rs
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			b.r.logger.Error("phase panicked in RunBatch", "runs", len(batch), "panic", p, "stack", string(debug.Stack()))
			results = fail(fmt.Errorf("the phase panicked in a batch of %d: %v", len(batch), p))
		}
	}()
	rs := b.phase.RunBatch(ctx, items)
	if len(rs) != len(batch) {
		return fail(fmt.Errorf("the phase's RunBatch returned %d results for a batch of %d", len(rs), len(batch)))
	}
	return rs
}

// metrics are the batch counters of Status; zero for a phase that does
// not batch (b nil).
func (b *batcher) metrics() []sdk.Metric {
	var batches, runs uint64
	if b != nil {
		batches, runs = b.batches.Load(), b.runs.Load()
	}
	return []sdk.Metric{
		{Name: "batches_total", Help: "Batched runs of two Runs or more.", Counter: true, Value: float64(batches)},
		{Name: "batched_runs_total", Help: "Runs computed in batched runs of two or more.", Counter: true, Value: float64(runs)},
	}
}

// close stops the loop once its batch is over (done is closed then);
// Runs still pending fail with transfer.ErrReleased. Idempotent.
func (b *batcher) close() {
	b.mu.Lock()
	b.stopped = true
	pending := b.pending
	b.pending = nil
	b.mu.Unlock()
	b.stop()
	for _, it := range pending {
		it.res.Err = transfer.ErrReleased
		close(it.ended)
	}
}

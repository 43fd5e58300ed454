package sdk

import (
	"context"
	"time"

	"github.com/phased/phased/sdk/tensor"
)

// FeatureBatch: the phase plugin runs the Runs that reach one instance
// together, as one batched computation (BatchPhase; docs/protocol.md
// 2.5). The phase runtime lists it for a phase that implements
// BatchPhase.
const FeatureBatch = "batch"

// BatchPhase is implemented by a phase that computes several requests in
// one batched run (a DiT forward over a batch). The runtime then gathers
// the Runs whose inputs have arrived on one instance into batches of at
// most MaxSize, waiting up to MaxWait after the first for more, one
// batch at a time, and calls RunBatch instead of Run for them; Run is
// still called for a batch of one.
type BatchPhase interface {
	Phase
	// BatchLimits returns the phase's defaults, which the config's
	// batch { max_size, max_wait } override.
	BatchLimits() BatchLimits
	// RunBatch computes every item and returns one result per item, in
	// order: its outputs, as Run returns them, or its error, which fails
	// that item's request only. Each item's Ctx is its own Run's (its
	// cancellation, ReportProgress, Alloc, Checkpoint and Resume); ctx
	// ends when every item's has, or at release. Inputs are read-only,
	// as Run's are.
	RunBatch(ctx context.Context, items []BatchItem) []BatchResult
}

// BatchLimits bound one batch: at most MaxSize Runs, gathered for at
// most MaxWait after the first is ready.
type BatchLimits struct {
	MaxSize int
	MaxWait time.Duration
}

// BatchItem is one Run of a batch.
type BatchItem struct {
	Ctx     context.Context
	Request Request
	Inputs  []tensor.Tensor
}

// BatchResult is one item's outcome.
type BatchResult struct {
	Output Output
	Err    error
}

package sdk

import (
	"context"
	"errors"
)

// Progress is one event about one request's Run on one phase instance, as
// PhaseControl.Progress delivers it.
type Progress struct {
	Request string // the request id
	Stage   string // StageWaiting, StageComputing, StageSending or StageFinished
	// Done and Total count units of work in StageComputing, as the phase
	// reports them with ReportProgress: 0 of 1 until it does, and 1 of 1
	// when a phase that never reports returns without an error. They are
	// 0 in the other stages.
	Done, Total int
	// InRoom and OutRoom are the Run's rooms (0: none). A request
	// dispatched again gets new rooms, so they tell its attempts apart.
	InRoom, OutRoom uint64
	// Resumed, in StageComputing, is the step the Run resumed at from
	// the request's checkpoint (Resume); 0 when it began at the start.
	// Done counts from the start either way.
	Resumed int
}

// The stages of a Run, in the order the runtime reports them. Every Run
// the instance accepts ends with StageFinished, whether it succeeded or
// failed; StageComputing comes any number of times, StageSending only
// for a Run with an out room.
const (
	// StageWaiting: Run waits for its inputs (at once for the first phase).
	StageWaiting = "waiting"
	// StageComputing: the phase's Run is executing; Done of Total units of
	// work, as the phase reports them with ReportProgress.
	StageComputing = "computing"
	// StageSending: the outputs are with the transfer manager, on their way
	// to the next phase.
	StageSending = "sending"
	// StageFinished: this instance's Run returned, with or without an error.
	StageFinished = "finished"
)

// ErrNoProgress is wrapped by the error of PhaseControl.Progress when the
// plugin does not serve progress (it was built with an SDK older than the
// Progress RPC).
var ErrNoProgress = errors.New("the plugin reports no progress")

// ReportProgress reports, from inside Phase.Run, that done of total units
// of work (denoising steps, frames, ...) are done for the request being
// run; ctx is the one Run was given, or one derived from it. Each call
// becomes a StageComputing event on the instance's Progress streams. It
// never blocks on a slow reader, and does nothing when ctx comes from
// elsewhere (a unit test, sdk.RunLocal) or once Run has returned.
func ReportProgress(ctx context.Context, done, total int) {
	if report, ok := ctx.Value(reporterKey{}).(func(done, total int)); ok {
		report(done, total)
	}
}

// reporterKey is the context key under which Run's ctx carries its
// reporter.
type reporterKey struct{}

// WithReporter returns ctx carrying report, which ReportProgress calls
// with what a phase reports from Run. A phase runtime (package sdk/phase,
// or one written in another language's SDK) gives Run such a context;
// phase authors never call it.
func WithReporter(ctx context.Context, report func(done, total int)) context.Context {
	return context.WithValue(ctx, reporterKey{}, report)
}

// Command flaky is a test-only phase plugin: the transformer, except that
// a request whose prompt starts with one of these prefixes misbehaves, once
// per request id (a marker file in the directory its "marker_dir" param
// names remembers it across restarts):
//
//	crash:  the process exits with status 3 in Run
//	poison: the process exits with status 3 in Run, every time
//	hang:   Run blocks, ignoring cancellation and reporting no progress
//	slow:   Run takes 2 s (honouring cancellation), every time; the
//	        "slow" param sets the time, and with serial = "true" one
//	        instance runs one such Run at a time (as a GPU would)
//
// With the "pace" param (a duration), every step the transformer reports
// waits that long first, so that a test can act between two steps.
//
// Everything else, and every retry but a poison one's, is the transformer's, so that retried
// requests still produce the reference artifact. Its Load (the readiness
// stage) takes as long as the "load" param says ("0s" by default) and
// fails when "load_error" is set.
package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phase"
	"github.com/phased/phased/sdk/tensor"
)

type flaky struct {
	*transformer.Phase
	markers    string
	load       time.Duration
	loadError  string
	slow       time.Duration // a "slow:" Run's wait
	serial     sync.Mutex    // held through a "slow:" Run's wait, with serial = "true"
	oneAtATime bool
	pace       time.Duration // before each step reported
}

func (f *flaky) Configure(ctx context.Context, cfg sdk.Config) error {
	f.markers, f.loadError = cfg.Params["marker_dir"], cfg.Params["load_error"]
	if v := cfg.Params["load"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		f.load = d
	}
	f.slow = 2 * time.Second
	if v := cfg.Params["slow"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("slow: %w", err)
		}
		f.slow = d
	}
	f.oneAtATime = cfg.Params["serial"] == "true"
	if v := cfg.Params["pace"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("pace: %w", err)
		}
		f.pace = d
	}
	params := maps.Clone(cfg.Params)
	for _, k := range ownParams {
		delete(params, k)
	}
	cfg.Params = params
	return f.Phase.Configure(ctx, cfg)
}

// ValidateParams is the transformer's, less this plugin's own params,
// and a "load" that is not a duration.
func (f *flaky) ValidateParams(ctx context.Context, params map[string]string) ([]sdk.ParamProblem, error) {
	var problems []sdk.ParamProblem
	if v, ok := params["load"]; ok {
		if _, err := time.ParseDuration(v); err != nil {
			problems = append(problems, sdk.ParamProblem{Param: "load", Message: fmt.Sprintf("load = %q: not a duration, e.g. \"2s\"", v)})
		}
	}
	params = maps.Clone(params)
	for _, k := range ownParams {
		delete(params, k)
	}
	more, err := f.Phase.ValidateParams(ctx, params)
	return append(problems, more...), err
}

// Load stands for loading a model: it takes the "load" param's time.
func (f *flaky) Load(ctx context.Context) error {
	t := time.NewTimer(f.load)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	if f.loadError != "" {
		return errors.New(f.loadError)
	}
	return nil
}

// first reports whether this is the first time what happens to req.
func (f *flaky) first(what string, req sdk.Request) bool {
	fd, err := os.OpenFile(filepath.Join(f.markers, what+"-"+req.ID), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return false
	}
	fd.Close()
	return true
}

func (f *flaky) Run(ctx context.Context, req sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	switch {
	case strings.HasPrefix(req.Prompt, "crash:") && f.first("crash", req):
		os.Exit(3)
	case strings.HasPrefix(req.Prompt, "poison:"):
		os.Exit(3) // every time, on every instance
	case strings.HasPrefix(req.Prompt, "hang:") && f.first("hang", req):
		select {} // hangs; the supervisor must kill the process
	case strings.HasPrefix(req.Prompt, "slow:"):
		if f.oneAtATime {
			f.serial.Lock()
			defer f.serial.Unlock()
		}
		t := time.NewTimer(f.slow)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return sdk.Output{}, errors.Join(errors.New("slow: cancelled"), ctx.Err())
		}
	}
	return f.Phase.Run(f.paced(ctx), req, in)
}

// RunBatch is the transformer's, each item paced.
func (f *flaky) RunBatch(ctx context.Context, items []sdk.BatchItem) []sdk.BatchResult {
	for i := range items {
		items[i].Ctx = f.paced(items[i].Ctx)
	}
	return f.Phase.RunBatch(ctx, items)
}

// paced returns ctx whose progress reports each wait the "pace" param's
// time first.
func (f *flaky) paced(ctx context.Context) context.Context {
	if f.pace <= 0 {
		return ctx
	}
	return sdk.WithReporter(ctx, func(done, total int) {
		t := time.NewTimer(f.pace)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		sdk.ReportProgress(ctx, done, total)
	})
}

// Info is the transformer's, under this plugin's own name.
func (f *flaky) Info(ctx context.Context) (sdk.Info, error) {
	info, err := f.Phase.Info(ctx)
	info.Name = "flaky"
	return info, err
}

// ownParams are this plugin's params, not the transformer's.
var ownParams = []string{"marker_dir", "load", "load_error", "slow", "serial", "pace"}

func main() { phase.Serve(&flaky{Phase: transformer.New()}) }

var _ sdk.Loader = (*flaky)(nil)

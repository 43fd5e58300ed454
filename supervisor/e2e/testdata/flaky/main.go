// Command flaky is a test-only phase plugin: the transformer, except that
// a request whose prompt starts with one of these prefixes misbehaves, once
// per request id (a marker file in the directory its "marker_dir" param
// names remembers it across restarts):
//
//	crash:  the process exits with status 3 in Run
//	hang:   Run blocks, ignoring cancellation and reporting no progress
//	slow:   Run takes 2 s (honouring cancellation), every time
//
// Everything else, and every retry, is the transformer's, so that retried
// requests still produce the reference artifact.
package main

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

type flaky struct {
	*transformer.Phase
	markers string
}

func (f *flaky) Configure(ctx context.Context, cfg sdk.Config) error {
	f.markers = cfg.Params["marker_dir"]
	params := maps.Clone(cfg.Params)
	delete(params, "marker_dir")
	cfg.Params = params
	return f.Phase.Configure(ctx, cfg)
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
	case strings.HasPrefix(req.Prompt, "hang:") && f.first("hang", req):
		select {} // hangs; the supervisor must kill the process
	case strings.HasPrefix(req.Prompt, "slow:"):
		t := time.NewTimer(2 * time.Second)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return sdk.Output{}, errors.Join(errors.New("slow: cancelled"), ctx.Err())
		}
	}
	return f.Phase.Run(ctx, req, in)
}

func main() { sdk.ServePhase(&flaky{Phase: transformer.New()}) }

// Command forker is a test-only phase plugin: the encoder, except that when
// it is configured it starts a child process of its own (sleep 300) and
// writes the child's pid to the file its "pidfile" param names. The
// supervisor must kill that child with the plugin, as one process group.
// With the param inherit = "true" the child holds the plugin's stderr, as
// a worker process that logs would.
package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"

	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phase"
)

type forker struct {
	*encoder.Phase
}

func (f forker) Configure(ctx context.Context, cfg sdk.Config) error {
	child := exec.Command("sleep", "300")
	if cfg.Params["inherit"] == "true" {
		// File descriptor 2 itself, as a child that inherits its
		// parent's descriptors gets it (go-plugin's Serve points
		// os.Stderr at a pipe of its own).
		child.Stderr = os.NewFile(2, "stderr")
	}
	if err := child.Start(); err != nil {
		return err
	}
	if err := os.WriteFile(cfg.Params["pidfile"], fmt.Appendf(nil, "%d", child.Process.Pid), 0o600); err != nil {
		return err
	}
	params := maps.Clone(cfg.Params)
	delete(params, "pidfile")
	delete(params, "inherit")
	cfg.Params = params
	return f.Phase.Configure(ctx, cfg)
}

// ValidateParams is the encoder's, less this plugin's own params.
func (f forker) ValidateParams(ctx context.Context, params map[string]string) ([]sdk.ParamProblem, error) {
	params = maps.Clone(params)
	delete(params, "pidfile")
	delete(params, "inherit")
	return f.Phase.ValidateParams(ctx, params)
}

// Info is the encoder's, under this plugin's own name.
func (f forker) Info(ctx context.Context) (sdk.Info, error) {
	info, err := f.Phase.Info(ctx)
	info.Name = "forker"
	return info, err
}

func main() { phase.Serve(forker{encoder.New()}) }

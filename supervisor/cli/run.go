package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// runCmd starts a supervisor in this process on a private socket, submits
// --count requests of each prompt at once, waits for all of them, prints
// one line (or JSON object) per request and releases. It fails when any
// request failed.
func (a *app) runCmd() *cobra.Command {
	var sf startFlags
	var s submission
	var count int
	var out, socket string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "run (--prompt TEXT | --prompt-file FILE)...",
		Short: "Start a supervisor, submit requests, wait for them, release: the demo in one command",
		Long: `Starts a supervisor in this process on a private socket, submits --count
requests of each prompt (--prompt and --prompt-file, repeatable, in the
order given) all at once, waits for every one, prints one line per request
in id order (or one JSON object per request with --json) and releases the
supervisor. Request i of a prompt uses seed+i. On a terminal it shows the
requests in flight as they go: one line per phase with a bar of its
denoising steps.

It exits 0 when every request is done and 1 when any failed. Ctrl-C
releases the supervisor (requests in flight end failed), prints what
ended, and exits 130. run never listens on TCP, whatever the config says.`,
		Example: `  supervisor run --prompt "a red fox running through fresh snow" --count 4 --out out
  supervisor run --config examples/configs/t2v-tiny.hcl --prompt "a red circle moving left" --prompt "a blue square moving up"
  supervisor run --prompt-file prompts/a.txt --prompt-file prompts/b.txt --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sf.checkLog(); err != nil {
				return err
			}
			if count < 1 {
				return usagef("--count must be at least 1")
			}
			subs, err := s.resolve(cmd.InOrStdin())
			if err != nil {
				return err
			}
			cfg, err := sf.load()
			if err != nil {
				return err
			}
			if out != "" {
				cfg.ArtifactDir = out
			}
			// run serves its private socket only, whatever the config's
			// control block says.
			cfg.Control = config.Control{}
			if socket == "" {
				dir, err := os.MkdirTemp("/tmp", "phased-run-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				socket = filepath.Join(dir, "phased.sock")
			}
			logger := sf.logger(a.stderr)
			began := a.now()
			sigs, stop := notifySignals()
			defer stop()
			r, err := launch(cmd.Context(), cfg, socket, logger, &sf)
			if err != nil {
				return err
			}
			// The requests are one member of the group: when they are all
			// done the supervisor is released; when it is released first
			// (a signal), they end released and are waited for.
			results := make([]Result, count*len(subs))
			var b *board
			if !asJSON {
				b = a.newBoard(a.stdout, len(results))
			}
			stopErr := r.serve(sigs, submitAll(cmd.Context(), supervisor.NewClient(socket), subs, results, b.update))
			b.finish()
			failed, err := printResults(a.stdout, results, asJSON, len(subs) > 1)
			if err != nil {
				return err
			}
			if !asJSON {
				fmt.Fprintf(a.stdout, "%d of %d requests done in %.2fs (start, run, release)\n", len(results)-failed, len(results), a.now().Sub(began).Seconds())
			}
			switch {
			case stopErr != nil:
				return stopErr
			case r.signal != nil:
				return &exitError{code: ExitInterrupted, err: fmt.Errorf("interrupted (%v): the supervisor was released; %d of %d requests did not end done", r.signal, failed, len(results))}
			case failed > 0:
				return &exitError{code: ExitFailed, quiet: true, err: fmt.Errorf("%d of %d requests failed", failed, len(results))}
			}
			return nil
		},
	}
	fs := cmd.Flags()
	s.register(fs, "; repeat it to run several prompts, each --count times")
	fs.IntVar(&count, "count", 1, "number of requests `N` of each prompt; request i uses seed+i")
	fs.Int64Var(&s.seed, "seed", 0, "random seed `N` of the first request")
	fs.StringVar(&out, "out", "", "artifact `DIR` (overrides the config's artifact_dir)")
	fs.BoolVar(&asJSON, "json", false, `print one JSON object per request: {"id", "state", "artifact", "sha256", "reason", "seconds", "prompt"}`)
	sf.registerConfig(fs)
	fs.StringVar(&sf.stateDir, "state-dir", "", "state `DIR` for a request journal (default: none; the requests live in memory for this run)")
	// run prints its results; the logs say more with --log-level info.
	sf.registerLog(fs, "warn")
	fs.StringVar(&socket, "socket", "", "serve the control API on the socket `PATH` while it runs, for status and watch (default: a private one in a new directory under /tmp)")
	sf.completeLog(cmd)
	return cmd
}

// submitAll is the actor that submits len(results) requests at once,
// len(results)/len(subs) of each submission (the i-th of them with seed+i),
// and waits for them; its interrupt waits for them too.
func submitAll(ctx context.Context, c *supervisor.Client, subs []supervisor.Submission, results []Result, seen func(supervisor.RequestInfo)) actor {
	done := make(chan struct{})
	return actor{
		execute: func() error {
			defer close(done)
			var wg sync.WaitGroup
			per := len(results) / len(subs)
			for i := range results {
				wg.Go(func() {
					s := subs[i/per]
					s.Seed += int64(i % per)
					results[i] = submitAndWait(ctx, c, s, seen)
					results[i].Prompt = s.Prompt
				})
			}
			wg.Wait()
			return nil
		},
		interrupt: func(error) { <-done },
	}
}

// printResults prints one line (or JSON object) per request, in id order,
// ending in its prompt when withPrompt, and returns how many did not end
// done.
func printResults(stdout io.Writer, results []Result, asJSON, withPrompt bool) (failed int, err error) {
	slices.SortFunc(results, func(a, b Result) int { return strings.Compare(a.ID, b.ID) })
	for _, res := range results {
		if res.State != supervisor.StateDone {
			failed++
		}
		switch {
		case asJSON:
			if err := printJSON(stdout, res); err != nil {
				return failed, err
			}
		case res.State == supervisor.StateDone:
			fmt.Fprintf(stdout, "%s  done    %.2fs  %s  sha256 %s%s\n", res.ID, res.Seconds, res.Artifact, res.SHA256, promptTail(res, withPrompt))
		default:
			fmt.Fprintf(stdout, "%s  %s  %s%s\n", res.ID, res.State, res.Reason, promptTail(res, withPrompt))
		}
	}
	return failed, nil
}

// submitAndWait submits sub and waits for its end, handing seen each
// snapshot.
func submitAndWait(ctx context.Context, c *supervisor.Client, sub supervisor.Submission, seen func(supervisor.RequestInfo)) Result {
	id, err := c.Submit(ctx, sub)
	if err != nil {
		return Result{State: supervisor.StateFailed, Reason: err.Error()}
	}
	info, err := c.Watch(ctx, id, seen)
	if err != nil {
		return Result{ID: id, State: supervisor.StateFailed, Reason: err.Error()}
	}
	return result(info)
}

// promptTail is what ends a result's line: its prompt, quoted, when run
// was given several.
func promptTail(res Result, withPrompt bool) string {
	if !withPrompt {
		return ""
	}
	return fmt.Sprintf("  %q", res.Prompt)
}

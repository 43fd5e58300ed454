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
	"time"

	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// run starts a supervisor in this process on a private socket, submits
// --count requests of each --prompt at once, waits for all of them, prints
// one line (or JSON object) per request and releases. It fails when any
// request failed.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("run", stderr)
	var sf startFlags
	// run prints its results; the logs say more with --log-level info.
	sf.register(f, "warn")
	f.StringVar(&sf.stateDir, "state-dir", "", "state `DIR` for a request journal (default: none, requests live in memory for this one run)")
	var prompts promptList
	f.Var(&prompts, "prompt", "the prompt `TEXT` (required; repeat it to run several prompts, each --count times)")
	count := f.Int("count", 1, "number of requests `N` of each prompt; request i uses seed+i")
	seed := f.Int64("seed", 0, "random seed `N` of the first request")
	steps := f.Int("steps", supervisor.DefaultSteps, "refinement steps `N`")
	key := f.String("key", "", "affinity `KEY` of every request (see submit)")
	out := f.String("out", "", "artifact `DIR` (overrides the config's artifact_dir)")
	asJSON := f.Bool("json", false, "print one JSON object per request")
	f.socket = ""
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	if len(prompts) == 0 {
		prompts = promptList{""} // Validate says that a prompt is required
	}
	subs := make([]supervisor.Submission, 0, len(prompts))
	for _, p := range prompts {
		sub := supervisor.Submission{Prompt: p, Seed: *seed, Steps: *steps, Key: *key}
		if err := sub.Validate(); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		subs = append(subs, sub)
	}
	if *count < 1 {
		return fmt.Errorf("%w: --count must be at least 1", errUsage)
	}
	cfg, err := sf.load()
	if err != nil {
		return err
	}
	if *out != "" {
		cfg.ArtifactDir = *out
	}
	// run serves its private socket only, whatever the config's control
	// block says.
	cfg.Control = config.Control{}
	socket := f.socket
	if socket == "" {
		dir, err := os.MkdirTemp("/tmp", "phased-run-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		socket = filepath.Join(dir, "phased.sock")
	}
	logger := newLogger(sf.logLevel, stderr)
	began := time.Now()
	sigs, stop := notifySignals()
	defer stop()
	r, err := launch(ctx, cfg, socket, logger, &sf)
	if err != nil {
		return err
	}
	// The requests are one member of the group: when they are all done
	// the supervisor is released; when it is released first (a signal),
	// they end released and are waited for.
	results := make([]Result, *count*len(subs))
	stopErr := r.serve(sigs, submitAll(ctx, supervisor.NewClient(socket), subs, results))
	failed, err := printResults(stdout, results, *asJSON, len(subs) > 1)
	if err != nil {
		return err
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "%d of %d requests done in %.2fs (start, run, release)\n", len(results)-failed, len(results), time.Since(began).Seconds())
	}
	if stopErr != nil {
		return stopErr
	}
	if failed > 0 {
		return errSilent
	}
	return nil
}

// promptList is the repeatable --prompt flag.
type promptList []string

func (p *promptList) String() string { return strings.Join(*p, ", ") }

func (p *promptList) Set(s string) error {
	*p = append(*p, s)
	return nil
}

// submitAll is the actor that submits len(results) requests at once,
// len(results)/len(subs) of each submission (the i-th of them with seed+i),
// and waits for them; its interrupt waits for them too.
func submitAll(ctx context.Context, c *supervisor.Client, subs []supervisor.Submission, results []Result) actor {
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
					results[i] = submitAndWait(ctx, c, s)
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

func submitAndWait(ctx context.Context, c *supervisor.Client, sub supervisor.Submission) Result {
	id, err := c.Submit(ctx, sub)
	if err != nil {
		return Result{State: supervisor.StateFailed, Reason: err.Error()}
	}
	info, err := c.Watch(ctx, id, nil)
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

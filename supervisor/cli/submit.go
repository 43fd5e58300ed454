package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/phased/phased/supervisor"
)

// submission is the flags that make a Submission, shared by submit and
// run: the prompts (--prompt and --prompt-file, in the order given),
// seed, steps, key, priority and deadline.
type submission struct {
	prompts  promptList
	seed     int64
	steps    int
	key      string
	priority int
	deadline time.Duration
}

func (s *submission) register(fs *pflag.FlagSet, repeat string) {
	fs.Var(promptFlag{&s.prompts, false}, "prompt", fmt.Sprintf("the prompt `TEXT`, at most %d bytes%s", maxPromptBytes, repeat))
	fs.Var(promptFlag{&s.prompts, true}, "prompt-file", fmt.Sprintf("read the prompt from `FILE` (- for stdin), at most %d bytes; trailing newlines are dropped%s", maxPromptBytes, repeat))
	fs.IntVar(&s.steps, "steps", supervisor.DefaultSteps, fmt.Sprintf("denoising steps `N`, 1 to %d", maxSteps))
	fs.StringVar(&s.key, "key", "", fmt.Sprintf("affinity `KEY`, at most %d bytes (e.g. a LoRA): requests with one key stay on one instance under the affinity policy", supervisor.MaxKeyLen))
	fs.IntVar(&s.priority, "priority", supervisor.DefaultPriority, fmt.Sprintf("queue priority `N`, %d to %d: a queued request of a higher priority is dispatched first", supervisor.MinPriority, supervisor.MaxPriority))
	fs.DurationVar(&s.deadline, "deadline", 0, "fail the request \"deadline exceeded\" if it is not done `D` (e.g. 2m) after its submission; 0: the config's default_deadline, if any")
}

// resolve reads the prompt files and returns one checked Submission per
// prompt.
func (s *submission) resolve(stdin io.Reader) ([]supervisor.Submission, error) {
	prompts := s.prompts
	if len(prompts) == 0 {
		return nil, usagef("a prompt is required: give --prompt TEXT or --prompt-file FILE")
	}
	stdinUsed := false
	subs := make([]supervisor.Submission, 0, len(prompts))
	for _, p := range prompts {
		text := p.text
		if p.file != "" {
			if p.file == "-" && stdinUsed {
				return nil, usagef("--prompt-file -: stdin is read once; give the other prompts another way")
			}
			stdinUsed = stdinUsed || p.file == "-"
			var err error
			if text, err = readPrompt(p.file, stdin); err != nil {
				return nil, err
			}
		}
		sub := supervisor.Submission{Prompt: text, Seed: s.seed, Steps: s.steps, Key: s.key, Priority: s.priority, Deadline: supervisor.Duration(s.deadline)}
		if err := sub.Validate(); err != nil {
			return nil, badInput(err)
		}
		subs = append(subs, sub)
	}
	return subs, nil
}

// prompt is one --prompt TEXT or --prompt-file FILE.
type prompt struct{ text, file string }

// promptList is the prompts in the order the flags gave them.
type promptList []prompt

// promptFlag is --prompt (file false) or --prompt-file (file true); both
// append to one list.
type promptFlag struct {
	list *promptList
	file bool
}

func (f promptFlag) String() string {
	if f.list == nil {
		return ""
	}
	var s []string
	for _, p := range *f.list {
		if f.file && p.file != "" {
			s = append(s, p.file)
		} else if !f.file && p.file == "" {
			s = append(s, p.text)
		}
	}
	return strings.Join(s, ", ")
}

func (f promptFlag) Set(v string) error {
	if f.file {
		if v == "" {
			return errors.New("want a file name, or - for stdin")
		}
		*f.list = append(*f.list, prompt{file: v})
	} else {
		*f.list = append(*f.list, prompt{text: v})
	}
	return nil
}

func (f promptFlag) Type() string { return "string" }

// readPrompt reads a prompt from file ("-": stdin), refusing one over
// the limit without reading it all.
func readPrompt(file string, stdin io.Reader) (string, error) {
	r := stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return "", usagef("--prompt-file: %v", err)
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > maxPromptBytes {
			return "", usagef("--prompt-file %s: the prompt is %d bytes; at most %d are accepted", file, fi.Size(), maxPromptBytes)
		}
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxPromptBytes+1))
	if err != nil {
		return "", usagef("--prompt-file %s: %v", file, err)
	}
	if len(b) > maxPromptBytes {
		return "", usagef("--prompt-file %s: the prompt is more than %d bytes; at most %d are accepted", file, maxPromptBytes, maxPromptBytes)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func (a *app) submitCmd() *cobra.Command {
	var t target
	var s submission
	var wait, asJSON bool
	cmd := &cobra.Command{
		Use:   "submit (--prompt TEXT | --prompt-file FILE)",
		Short: "Submit a request and print its id; --wait follows it to its end",
		Long: `Submits one request to the running supervisor and prints its id.

The submission is checked here before the supervisor is called: a prompt
(1 to 65536 bytes), steps from 1 to 10000, a key of at most 256 bytes, a
priority from 1 to 100, a deadline of at most 720h.

Queued requests are dispatched by priority (the higher first), then by
deadline (the earlier first; those without one last), then in the order
they came. A request not done by its deadline fails "deadline exceeded",
queued or running; its rooms are removed in order like a removed one's.

With --wait it follows the request to its end like ` + "`supervisor watch`" + `: on a
terminal one line per phase with a bar of its denoising steps, steps/s and
the time left (while queued: its position and estimated start), redrawn
in place; off a terminal the request's events, one per line. It exits 0
when the request is done and 1 when it failed. Ctrl-C detaches (exit 130): the request goes
on, and ` + "`supervisor watch ID`" + ` follows it again.`,
		Example: `  supervisor submit --prompt "a lighthouse at dusk" --seed 7
  supervisor submit --prompt-file prompt.txt --steps 50 --wait
  supervisor submit --prompt "a storm at sea" --priority 80 --deadline 10m
  echo "a red fox in the snow" | supervisor submit --prompt-file - --wait --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(s.prompts) > 1 {
				return usagef("submit takes one prompt: give --prompt TEXT or --prompt-file FILE once (run takes several)")
			}
			subs, err := s.resolve(cmd.InOrStdin())
			if err != nil {
				return err
			}
			c, err := t.client()
			if err != nil {
				return err
			}
			id, err := c.Submit(cmd.Context(), subs[0])
			if err != nil {
				return err
			}
			switch {
			case !wait && asJSON:
				return printJSON(a.stdout, struct {
					ID string `json:"id"`
				}{id})
			case !wait:
				fmt.Fprintln(a.stdout, id)
				return nil
			case !asJSON:
				fmt.Fprintln(a.stdout, id)
			}
			return a.follow(cmd.Context(), c, id, asJSON)
		},
	}
	fs := cmd.Flags()
	s.register(fs, " (give --prompt or --prompt-file)")
	fs.Int64Var(&s.seed, "seed", 0, "random seed `N`")
	fs.BoolVar(&wait, "wait", false, "follow the request to its end, showing its progress; exit 1 if it failed")
	fs.BoolVar(&asJSON, "json", false, `print JSON: {"id"}, or with --wait the result {"id", "state", "artifact", "sha256", "reason", "seconds"}`)
	t.register(fs)
	return cmd
}

func (a *app) watchCmd() *cobra.Command {
	var t target
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "watch ID",
		Short: "Follow a request to its end, showing its progress",
		Long: `Follows a request, queued, running or ended, to its end, and shows it as
` + "`submit --wait`" + ` does: on a terminal one line per phase with a bar of its
denoising steps, steps/s and the time left (the queue position while
queued), redrawn in place; off a terminal the request's events, one per
line. It exits 0 when the request is done, 1 when it failed, 3 when there
is no such request. Ctrl-C stops watching (exit 130); the request goes on.`,
		Example: `  supervisor watch 01JDQ8Z4K7X2M9V3T6N5B8C1RW
  supervisor watch 01JDQ8Z4K7X2M9V3T6N5B8C1RW --json | jq -r .artifact`,
		Args:              oneID,
		ValidArgsFunction: t.completeIDs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := t.client()
			if err != nil {
				return err
			}
			return a.follow(cmd.Context(), c, args[0], asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print the result as JSON when the request ends: {"id", "state", "artifact", "sha256", "reason", "seconds"}`)
	t.register(cmd.Flags())
	return cmd
}

// follow shows request id's progress until it ends (nothing under
// --json), then its result. Ctrl-C detaches.
func (a *app) follow(parent context.Context, c *supervisor.Client, id string, asJSON bool) error {
	ctx, stop := a.interruptible(parent)
	defer stop()
	var f *follower
	if !asJSON {
		f = a.newFollower(a.stdout)
	}
	last, err := c.Watch(ctx, id, func(info supervisor.RequestInfo) {
		if f != nil {
			f.update(info)
		}
	})
	if f != nil {
		f.finish()
	}
	if err != nil {
		if ctx.Err() != nil && parent.Err() == nil {
			return &exitError{code: ExitInterrupted, plain: true,
				err: fmt.Errorf("detached; the request goes on: follow it with `supervisor watch %s`", id)}
		}
		return err
	}
	switch {
	case asJSON:
		if err := printJSON(a.stdout, result(last)); err != nil {
			return err
		}
	case last.State == supervisor.StateDone:
		fmt.Fprintf(a.stdout, "%s done: %s\n  sha256 %s\n", id, last.Artifact, last.SHA256)
	default:
		fmt.Fprintf(a.stdout, "%s failed: %s\n", id, last.Reason)
	}
	if last.State != supervisor.StateDone {
		return &exitError{code: ExitFailed, quiet: true, err: fmt.Errorf("request %s failed: %s", id, last.Reason)}
	}
	return nil
}

// describe renders one progress event.
func describe(e supervisor.Event, info supervisor.RequestInfo) string {
	switch e.What {
	case "scheduled":
		var parts []string
		for _, ph := range sortedKeys(info.Instances) {
			parts = append(parts, ph+"="+info.Instances[ph])
		}
		return "scheduled: " + strings.Join(parts, " ")
	case "phase done":
		return fmt.Sprintf("%-12s %-16s done in %s", e.Phase, e.Instance, e.Detail)
	case supervisor.StateFailed:
		return "failed: " + e.Detail
	}
	if e.Detail != "" {
		return e.What + ": " + e.Detail
	}
	return e.What
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Result is the JSON object `submit --wait --json`, `watch --json` and
// `run --json` print for one request.
type Result struct {
	ID       string  `json:"id"`
	State    string  `json:"state"`
	Artifact string  `json:"artifact,omitempty"`
	SHA256   string  `json:"sha256,omitempty"`
	Reason   string  `json:"reason,omitempty"`
	Seconds  float64 `json:"seconds,omitempty"`
	Prompt   string  `json:"prompt,omitempty"` // set by run only
}

func result(info supervisor.RequestInfo) Result {
	r := Result{ID: info.ID, State: info.State, Artifact: info.Artifact, SHA256: info.SHA256, Reason: info.Reason}
	if info.Finished != nil {
		r.Seconds = info.Finished.Sub(info.Submitted).Seconds()
	}
	return r
}

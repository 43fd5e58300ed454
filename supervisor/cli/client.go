package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/phased/phased/supervisor"
)

func submit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newClientFlags("submit", stderr)
	prompt := f.String("prompt", "", "the prompt `TEXT` (required)")
	seed := f.Int64("seed", 0, "random seed `N`")
	steps := f.Int("steps", supervisor.DefaultSteps, "refinement steps `N`")
	key := f.String("key", "", "affinity `KEY` (e.g. a LoRA): requests with one key stay on one instance under the affinity policy")
	wait := f.Bool("wait", false, "wait for the request to end, showing progress")
	asJSON := f.Bool("json", false, "with --wait: print one JSON object")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	id, err := c.Submit(ctx, supervisor.Submission{Prompt: *prompt, Seed: *seed, Steps: *steps, Key: *key})
	if err != nil {
		return err
	}
	if !*wait {
		fmt.Fprintln(stdout, id)
		return nil
	}
	if !*asJSON {
		fmt.Fprintln(stdout, id)
	}
	shown := 0
	last, err := c.Watch(ctx, id, func(info supervisor.RequestInfo) {
		if *asJSON {
			return
		}
		for _, e := range info.Events[min(shown, len(info.Events)):] {
			fmt.Fprintln(stdout, "  "+describe(e, info))
		}
		shown = len(info.Events)
	})
	if err != nil {
		return err
	}
	if *asJSON {
		if err := printJSON(stdout, result(last)); err != nil {
			return err
		}
	} else if last.State == supervisor.StateDone {
		fmt.Fprintf(stdout, "%s done: %s\n  sha256 %s\n", id, last.Artifact, last.SHA256)
	} else {
		fmt.Fprintf(stdout, "%s failed: %s\n", id, last.Reason)
	}
	if last.State != supervisor.StateDone {
		return errSilent
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

// Result is the JSON object `submit --wait --json` and `run --json` print
// for one request.
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

func status(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newClientFlags("status", stderr)
	asJSON := f.Bool("json", false, "print JSON")
	limit := f.Int("limit", supervisor.DefaultPageLimit, fmt.Sprintf("list at most `N` requests (1 to %d)", supervisor.MaxPageLimit))
	after := f.String("after", "", "list the requests after request `ID` (the next page)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	if len(pos) == 1 {
		info, err := c.Request(ctx, pos[0])
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, info)
		}
		fmt.Fprintf(stdout, "%s %s %s%s\n", info.ID, info.State, info.Artifact, info.Reason)
		return nil
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	st, err := c.StatusPage(ctx, supervisor.Page{Limit: *limit, After: *after})
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "supervisor pid %d, run dir %s\n\n", st.PID, st.RunDir)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tINSTANCE\tPID\tSTATE\tOPEN ROOMS\tIN FLIGHT\tRESTARTS")
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			state := in.State
			switch {
			case in.Error != "":
				state += " (" + in.Error + ")"
			case in.State == "failed" && in.LastExit != "":
				state += " (last: " + in.LastExit + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%d\n", ph.Name, in.ID, in.PID, state, in.OpenRooms, in.Inflight, in.Restarts)
		}
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	printPolicies(stdout, st.Policies)
	counts := st.Counts
	fmt.Fprintf(stdout, "\nrequests: %d (queued %d, running %d, done %d, failed %d); instance exits %d, retried attempts %d\n", st.Total,
		counts[supervisor.StateQueued], counts[supervisor.StateRunning], counts[supervisor.StateDone], counts[supervisor.StateFailed],
		st.InstanceExits, st.Retried)
	if len(st.Requests) > 0 {
		tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tRESULT")
		for _, r := range st.Requests {
			res := r.Artifact
			if r.Reason != "" {
				res = r.Reason
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.ID, r.State, res)
		}
		tw.Flush()
	}
	if st.Next != "" {
		fmt.Fprintf(stdout, "more: supervisor status --after %s\n", st.Next)
	}
	return nil
}

func remove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newClientFlags("remove", stderr)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: want exactly one REQUEST_ID", errUsage)
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	info, err := c.Remove(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %s", info.ID, info.State)
	if info.Reason != "" {
		fmt.Fprintf(stdout, " (%s)", info.Reason)
	}
	fmt.Fprintln(stdout)
	return nil
}

func release(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newClientFlags("release", stderr)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	if err := c.Release(ctx); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "released")
	return nil
}

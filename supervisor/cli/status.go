package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/phased/phased/supervisor"
)

func (a *app) statusCmd() *cobra.Command {
	var t target
	var asJSON, newest bool
	var limit int
	var after, state string
	cmd := &cobra.Command{
		Use:   "status [ID]",
		Short: "Show the phases, instances, policies and requests; or one request",
		Long: `Without an ID: the supervisor's own state, its run and artifact
directories; each phase's instances (pid, state — ready, restarting,
failed…, open rooms, requests in flight, restarts); the policies; the
counts of requests; and one page of the requests it remembers, oldest
first or --newest first (--limit, --after for the next page, --state to
list one state).

With an ID: that request (any journaled one, also from before a restart):
its state, prompt, instances, artifact or reason, its events, and its
timeline — where its time went, span by span (queued, schedule, rooms,
each phase's wait and run, each hop with its bytes, remove, artifact).`,
		Example: `  supervisor status
  supervisor status --state failed --newest --limit 20
  supervisor status 01JDQ8Z4K7X2M9V3T6N5B8C1RW
  supervisor status 01JDQ8Z4K7X2M9V3T6N5B8C1RW --json | jq .timeline`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("unexpected argument %q: want at most one REQUEST_ID", strings.Join(args, " "))
			}
			return nil
		},
		ValidArgsFunction: t.completeIDs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				for _, f := range []string{"state", "limit", "after", "newest"} {
					if cmd.Flags().Changed(f) {
						return usagef("--%s lists requests; it does not go with a REQUEST_ID", f)
					}
				}
			}
			if state != "" {
				if err := wantOneOf("state", state, supervisor.RequestStates...); err != nil {
					return err
				}
			}
			if limit < 1 || limit > supervisor.MaxPageLimit {
				return usagef("--limit %d: want 1 to %d", limit, supervisor.MaxPageLimit)
			}
			c, err := t.client()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				info, err := c.Request(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.stdout, info)
				}
				printRequest(a.stdout, info)
				return nil
			}
			st, err := c.StatusPage(cmd.Context(), supervisor.Page{Limit: limit, After: after, State: state, Newest: newest})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, st)
			}
			printStatus(a.stdout, st, limit, state, newest)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.BoolVar(&asJSON, "json", false, "print JSON: the status object, or the request with its events and timeline")
	fs.IntVar(&limit, "limit", supervisor.DefaultPageLimit, fmt.Sprintf("list at most `N` requests, 1 to %d", supervisor.MaxPageLimit))
	fs.StringVar(&after, "after", "", "list the requests after request `ID` (the next page)")
	fs.StringVar(&state, "state", "", "list only the requests in `STATE`: queued, running, done or failed")
	fs.BoolVar(&newest, "newest", false, "list the newest requests first (--after then pages to older ones)")
	t.register(fs)
	_ = cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions(supervisor.RequestStates, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func printStatus(w io.Writer, st supervisor.Status, limit int, state string, newest bool) {
	fmt.Fprintf(w, "supervisor pid %d, %s\n  run dir    %s\n  artifacts  %s\n\n", st.PID, orDash(st.State), st.RunDir, orDash(st.ArtifactDir))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	// A cluster's instances say their host.
	hosts := slices.ContainsFunc(st.Phases, func(ph supervisor.PhaseStatus) bool {
		return slices.ContainsFunc(ph.Instances, func(in supervisor.InstanceStatus) bool { return in.Host != "" })
	})
	if hosts {
		fmt.Fprintln(tw, "PHASE\tINSTANCE\tHOST\tPID\tSTATE\tOPEN ROOMS\tIN FLIGHT\tRESTARTS")
	} else {
		fmt.Fprintln(tw, "PHASE\tINSTANCE\tPID\tSTATE\tOPEN ROOMS\tIN FLIGHT\tRESTARTS")
	}
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			s := in.State
			switch {
			case in.Error != "":
				s += " (" + in.Error + ")"
			case in.State == "failed" && in.LastExit != "":
				s += " (last: " + in.LastExit + ")"
			}
			id := in.ID
			if hosts {
				id += "\t" + orDash(in.Host)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%d\n", ph.Name, id, in.PID, s, in.OpenRooms, in.Inflight, in.Restarts)
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	printPolicies(w, st.Policies)
	counts := st.Counts
	fmt.Fprintf(w, "\nrequests: %d (queued %d, running %d, done %d, failed %d); instance exits %d, retried attempts %d\n", st.Total,
		counts[supervisor.StateQueued], counts[supervisor.StateRunning], counts[supervisor.StateDone], counts[supervisor.StateFailed],
		st.InstanceExits, st.Retried)
	if len(st.Requests) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
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
		next := "supervisor status --after " + st.Next
		if limit != supervisor.DefaultPageLimit {
			next += fmt.Sprintf(" --limit %d", limit)
		}
		if state != "" {
			next += " --state " + state
		}
		if newest {
			next += " --newest"
		}
		fmt.Fprintf(w, "more: %s\n", next)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printRequest shows one request: a first line "ID STATE RESULT", its
// particulars, its events and its timeline.
func printRequest(w io.Writer, info supervisor.RequestInfo) {
	fmt.Fprintf(w, "%s %s %s%s\n", info.ID, info.State, info.Artifact, info.Reason)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if info.Prompt != "" {
		fmt.Fprintf(tw, "  prompt\t%q\n", info.Prompt)
	}
	key := ""
	if info.Key != "" {
		key = fmt.Sprintf(", key %q", info.Key)
	}
	fmt.Fprintf(tw, "  seed\t%d, steps %d%s, priority %d\n", info.Seed, info.Steps, key, info.Priority)
	if !info.Submitted.IsZero() {
		when := info.Submitted.Local().Format("2006-01-02 15:04:05.000")
		if info.Finished != nil {
			when += fmt.Sprintf(", ended after %s", fmtDur(info.Finished.Sub(info.Submitted)))
		}
		fmt.Fprintf(tw, "  submitted\t%s\n", when)
	}
	if info.Deadline != nil {
		fmt.Fprintf(tw, "  deadline\t%s (%s after its submission)\n", info.Deadline.Local().Format("2006-01-02 15:04:05.000"), fmtDur(info.Deadline.Sub(info.Submitted)))
	}
	if info.QueuePosition > 0 {
		start := ""
		if info.EstimatedStart != nil {
			start = fmt.Sprintf(", estimated start %s", info.EstimatedStart.Local().Format("15:04:05"))
		}
		fmt.Fprintf(tw, "  queue\tposition %d%s\n", info.QueuePosition, start)
	}
	if info.Attempts > 1 {
		fmt.Fprintf(tw, "  attempts\t%d\n", info.Attempts)
	}
	if len(info.Instances) > 0 {
		var parts []string
		for _, ph := range sortedKeys(info.Instances) {
			parts = append(parts, ph+"="+info.Instances[ph])
		}
		fmt.Fprintf(tw, "  instances\t%s\n", strings.Join(parts, " "))
	}
	if len(info.Rooms) > 0 {
		var rooms []string
		for i, r := range info.Rooms {
			s := fmt.Sprint(r)
			if i < len(info.Backends) && info.Backends[i] != "" {
				s += " (" + info.Backends[i] + ")"
			}
			rooms = append(rooms, s)
		}
		fmt.Fprintf(tw, "  rooms\t%s\n", strings.Join(rooms, ", "))
	}
	if info.Artifact != "" {
		fmt.Fprintf(tw, "  artifact\t%s\n", info.Artifact)
	}
	if info.SHA256 != "" {
		fmt.Fprintf(tw, "  sha256\t%s\n", info.SHA256)
	}
	if info.Reason != "" {
		fmt.Fprintf(tw, "  reason\t%s\n", info.Reason)
	}
	tw.Flush()
	if len(info.Events) > 0 {
		fmt.Fprintln(w, "\nevents:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, e := range info.Events {
			fmt.Fprintf(tw, "  %s\t%s\n", offset(e.Time, info.Submitted), describe(e, info))
		}
		tw.Flush()
	}
	if len(info.Timeline) > 0 {
		fmt.Fprintln(w, "\ntimeline:")
		printTimeline(w, info)
	}
}

// offset says t as an offset from the request's submission: +12.3ms.
func offset(t, from time.Time) string {
	if t.IsZero() || from.IsZero() {
		return "-"
	}
	return "+" + fmtDur(t.Sub(from))
}

// printTimeline renders a request's spans as an aligned table: the span,
// its phase/instance, its start as an offset from the submission, its
// duration ("…" while it lasts) and what more it says (a hop's room,
// backend and bytes, a run's steps, the detail).
func printTimeline(w io.Writer, info supervisor.RequestInfo) {
	var buf strings.Builder
	defer func() { writeTrimmed(w, buf.String()) }()
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SPAN\tPHASE/INSTANCE\tSTART\tDURATION\tDETAIL")
	for _, s := range info.Timeline {
		where := "-"
		switch {
		case s.Phase != "" && s.Instance != "":
			where = s.Phase + "/" + s.Instance
		case s.Phase != "":
			where = s.Phase
		case s.Instance != "":
			where = s.Instance
		}
		took := "…"
		if s.End != nil {
			took = fmtDur(s.End.Sub(s.Start))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", s.Name, where, offset(s.Start, info.Submitted), took, spanDetail(s))
	}
	tw.Flush()
}

// writeTrimmed writes s without the spaces that end its lines (a
// tabwriter pads an empty last column).
func writeTrimmed(w io.Writer, s string) {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if strings.HasSuffix(l, "\n") {
			lines[i] = strings.TrimRight(l, " \n") + "\n"
		}
	}
	_, _ = io.WriteString(w, strings.Join(lines, ""))
}

// spanDetail is what a span says beyond its times.
func spanDetail(s supervisor.Span) string {
	var parts []string
	if s.Room != 0 {
		parts = append(parts, fmt.Sprintf("room %d", s.Room))
	}
	if s.Backend != "" {
		parts = append(parts, s.Backend)
	}
	if s.Bytes > 0 {
		b := supervisor.HumanBytes(s.Bytes)
		if s.End != nil && s.End.After(s.Start) {
			b += fmt.Sprintf(" (%s/s)", supervisor.HumanBytes(int64(float64(s.Bytes)/s.End.Sub(s.Start).Seconds())))
		}
		parts = append(parts, b)
	}
	switch {
	case s.Steps == 1:
		parts = append(parts, "1 step")
	case s.Steps > 1:
		parts = append(parts, fmt.Sprintf("%d steps", s.Steps))
	}
	if s.Detail != "" {
		parts = append(parts, s.Detail)
	}
	return strings.Join(parts, ", ")
}

// completeIDs completes a request id from the supervisor's list, newest
// first.
func (t *target) completeIDs(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	c, err := t.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
	defer cancel()
	st, err := c.StatusPage(ctx, supervisor.Page{Limit: supervisor.MaxPageLimit, Newest: true})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var ids []string
	for _, r := range st.Requests {
		ids = append(ids, r.ID+"\t"+r.State)
	}
	return ids, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveKeepOrder
}

func (a *app) removeCmd() *cobra.Command {
	var t target
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a request: its rooms are removed upstream first, and it ends failed",
		Long: `Removes a request, queued or in flight: its rooms are removed in order,
upstream first, each phase returning only when it no longer touches the
room's buffers, and the request ends failed with the reason "removed".
Removing a request that has ended changes nothing and prints its state
(remove is idempotent). It exits 3 when there is no such request.`,
		Example: `  supervisor remove 01JDQ8Z4K7X2M9V3T6N5B8C1RW
  supervisor remove 01JDQ8Z4K7X2M9V3T6N5B8C1RW --json`,
		Args:              oneID,
		ValidArgsFunction: t.completeIDs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := t.client()
			if err != nil {
				return err
			}
			info, err := c.Remove(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, info)
			}
			fmt.Fprintf(a.stdout, "%s %s", info.ID, info.State)
			if info.Reason != "" {
				fmt.Fprintf(a.stdout, " (%s)", info.Reason)
			}
			fmt.Fprintln(a.stdout)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the request's final state as JSON")
	t.register(cmd.Flags())
	return cmd
}

func (a *app) releaseCmd() *cobra.Command {
	var t target
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Release the supervisor in order; it exits",
		Long: `Asks the supervisor for an ordered release and returns when it is done:
it stops taking requests, lets those in flight finish within the grace
period (the config's release block), fails the rest, removes their rooms,
releases the phases upstream → downstream, stops the policies and exits,
leaving no process, socket or shared memory behind.

When no supervisor listens there, release has nothing to do: it says so
and exits 0, as stopping a stopped service does.`,
		Example: `  supervisor release
  supervisor release --socket /run/phased/phased.sock --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := t.client()
			if err != nil {
				return err
			}
			type released struct {
				Supervisor string `json:"supervisor"` // its socket or address
				Released   bool   `json:"released"`   // false: none was there
				Message    string `json:"message"`
			}
			out := released{Supervisor: t.where(), Released: true, Message: "released"}
			if err := c.Release(cmd.Context()); err != nil {
				if !isNoSupervisor(err) {
					return err
				}
				out.Released, out.Message = false, fmt.Sprintf("no supervisor at %s: nothing to release", out.Supervisor)
			}
			if asJSON {
				return printJSON(a.stdout, out)
			}
			fmt.Fprintln(a.stdout, out.Message)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"supervisor", "released", "message"}`)
	t.register(cmd.Flags())
	return cmd
}

// isNoSupervisor reports whether err says that nothing listens where the
// client called.
func isNoSupervisor(err error) bool { return errors.Is(err, supervisor.ErrNoSupervisor) }

package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/phased/phased/supervisor"
)

// scaleCmd is `supervisor scale PHASE N`.
func (a *app) scaleCmd() *cobra.Command {
	var t target
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "scale PHASE N",
		Short: "Set a phase's instance count, live",
		Long: `Sets PHASE's instance count to N, from its min to its max in the config
(1 and its instances unless the config says), while requests run.

Scale-out starts the new instances and places requests on them only once
they are ready; it returns when they are. Scale-in retires the last
instances in order: each takes no new request, its requests are given the
release grace to finish (then they are dispatched again elsewhere, which
spends none of their retries), its rooms are removed, then its process is
released; it returns when they are. With a state directory the count
survives a restart of the supervisor, until the config's instances for
the phase change.

An unknown phase exits 3; a count out of bounds exits 2.`,
		Example: `  supervisor scale transformer 4
  supervisor scale transformer 1 --json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("scale takes a phase and a count, e.g. scale transformer 4")
			}
			if _, err := strconv.Atoi(args[1]); err != nil {
				return usagef("scale %s %s: the count must be a whole number", args[0], args[1])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			n, _ := strconv.Atoi(args[1])
			c, err := t.client()
			if err != nil {
				return err
			}
			res, err := c.Scale(cmd.Context(), args[0], n)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, res)
			}
			fmt.Fprintf(a.stdout, "%s: %d → %d instances", res.Phase, res.From, res.To)
			if len(res.Started) > 0 {
				fmt.Fprintf(a.stdout, "; started %s", strings.Join(res.Started, ", "))
			}
			if len(res.Retired) > 0 {
				fmt.Fprintf(a.stdout, "; retired %s", strings.Join(res.Retired, ", "))
			}
			fmt.Fprintln(a.stdout)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print what changed as JSON: {"phase", "from", "to", "started", "retired"}`)
	t.register(cmd.Flags())
	return cmd
}

const scalerForms = "`scaler list`, `scaler set NAME [--param KEY=VALUE]...` or `scaler set --off`"

// scalerCmd is `supervisor scaler list|set`.
func (a *app) scalerCmd() *cobra.Command {
	var t target
	var asJSON bool
	args, run := subVerbs(scalerForms)
	cmd := &cobra.Command{
		Use:   "scaler (list | set NAME | set --off)",
		Short: "Show or change the autoscaler, live",
		Long: `A scaler plugin (phased-scaler-NAME) is called every interval (the config's
scaler block, default 5s) with each phase's load — its instances and their
states, requests in flight, utilisation, service time, steps per second,
the queue's depth and wait — and returns the instance count each phase
should have, which ` + "`supervisor scale`" + ` applies within the phase's min and max.
Built in: threshold (out above a utilisation, in below another, with a
cooldown) and queue (the count that keeps the queue wait under a target).
` + "`scaler list`" + ` shows the scaler, its last answer and the phases' counts;
` + "`scaler set`" + ` swaps it live, make before break: the new one must answer a
trial call first. Each prints the list afterwards.

An unknown scaler exits 3.`,
		Example: `  supervisor scaler list
  supervisor scaler set threshold --param out=0.8 --param in=0.2 --param cooldown=30s
  supervisor scaler set queue --param target_wait=10s
  supervisor scaler set --off`,
		Args:        args,
		RunE:        run,
		Annotations: map[string]string{groupOnly: "true"},
	}
	pf := cmd.PersistentFlags()
	pf.BoolVar(&asJSON, "json", false, `print the scaler list as JSON: {"scaler", "interval", "phases", "available"}`)
	t.register(pf)
	show := func(l supervisor.ScalerList) error {
		if asJSON {
			return printJSON(a.stdout, l)
		}
		printScalers(a.stdout, l)
		return nil
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Show the autoscaler, its last answer, the phases' counts and the scalers on offer",
		Long: `Shows the scaler plugin process (pid, state, restarts, params, calls,
last error), then each phase's instance count, its min and max, the
scaler's last target for it and when its count last changed, then the
scaler plugins the plugin directory offers.`,
		Example: `  supervisor scaler list
  supervisor scaler list --json | jq '.phases[] | {phase, instances}'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := t.client()
			if err != nil {
				return err
			}
			l, err := c.Scalers(cmd.Context())
			if err != nil {
				return err
			}
			return show(l)
		},
	})
	var params []string
	var off bool
	set := &cobra.Command{
		Use:   "set (NAME | --off)",
		Short: "Make scaler NAME the autoscaler, live, make before break; --off turns autoscaling off",
		Long: `Starts scaler plugin NAME (phased-scaler-NAME in the plugin directory) with
the params given, calls it once on the load now (its answer is not
applied), and only when it answers with targets for phases of the
pipeline makes it the autoscaler; the scaler before it is stopped. With
--off there is no autoscaler: the counts stay as they are. The change
lasts until the supervisor stops: put it in the config to keep it.`,
		Example: `  supervisor scaler set threshold --param cooldown=10s
  supervisor scaler set --off`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case off && len(args) > 0:
				return usagef("scaler set --off takes no name")
			case !off && len(args) != 1:
				return usagef("want %s", scalerForms)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			kv := map[string]string{}
			for _, p := range params {
				k, v, ok := strings.Cut(p, "=")
				if !ok || k == "" {
					return usagef("--param %q: want KEY=VALUE", p)
				}
				kv[k] = v
			}
			name := ""
			if !off {
				name = args[0]
			}
			c, err := t.client()
			if err != nil {
				return err
			}
			l, err := c.SetScaler(cmd.Context(), name, kv)
			if err != nil {
				return err
			}
			return show(l)
		},
	}
	set.Flags().StringArrayVar(&params, "param", nil, "a param `KEY=VALUE` for the scaler (repeat it)")
	set.Flags().BoolVar(&off, "off", false, "turn autoscaling off")
	cmd.AddCommand(set)
	return cmd
}

func printScalers(w io.Writer, l supervisor.ScalerList) {
	if sc := l.Scaler; sc != nil {
		pid := "-"
		if sc.PID != 0 {
			pid = fmt.Sprint(sc.PID)
		}
		fmt.Fprintf(w, "scaler %s (pid %s, %s, restarts %d), every %s, %d calls", sc.Name, pid, sc.State, sc.Restarts, l.Interval, sc.Calls)
		if len(sc.Params) > 0 {
			var kv []string
			for _, k := range slices.Sorted(maps.Keys(sc.Params)) {
				kv = append(kv, k+"="+sc.Params[k])
			}
			fmt.Fprintf(w, ", params %s", strings.Join(kv, " "))
		}
		fmt.Fprintln(w)
		if sc.LastError != "" {
			fmt.Fprintf(w, "  last error: %s\n", sc.LastError)
		}
	} else {
		fmt.Fprintln(w, "scaler: none (the instance counts change only by `supervisor scale`)")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPHASE\tINSTANCES\tMIN\tMAX\tTARGET\tLAST SCALED")
	for _, ph := range l.Phases {
		target, when := "-", "-"
		if sc := l.Scaler; sc != nil {
			if n, ok := sc.Targets[ph.Phase]; ok {
				target = fmt.Sprint(n)
			}
		}
		if ph.LastScaled != nil {
			when = ph.LastScaled.Local().Format("15:04:05")
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", ph.Phase, ph.Instances, ph.Min, ph.Max, target, when)
	}
	tw.Flush()
	fmt.Fprintf(w, "\navailable: %s\n", strings.Join(l.Available, ", "))
}

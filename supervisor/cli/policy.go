package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/phased/phased/supervisor"
)

const policyForms = "`policy list`, `policy set PHASE NAME`, `policy shadow PHASE NAME` or `policy shadow --off PHASE`"

// policyCmd is `supervisor policy list|set|shadow`.
func (a *app) policyCmd() *cobra.Command {
	var t target
	var asJSON bool
	args, run := subVerbs(policyForms)
	cmd := &cobra.Command{
		Use:   "policy (list | set PHASE NAME | shadow PHASE NAME | shadow --off PHASE)",
		Short: "Show or change the phases' policies, live",
		Long: `A policy plugin picks the instance of a phase that serves each request.
` + "`policy list`" + ` shows each phase's policy and shadow with their counts, the
policy processes, and the policies the plugin directory offers; ` + "`policy set`" + `
swaps a phase's policy live; ` + "`policy shadow`" + ` runs a second policy beside it
to see how often it would agree. Each prints the list afterwards.

An unknown phase or policy exits 3.`,
		Example: `  supervisor policy list
  supervisor policy set transformer leastloaded
  supervisor policy shadow transformer p2c
  supervisor policy shadow --off transformer`,
		Args:        args,
		RunE:        run,
		Annotations: map[string]string{groupOnly: "true"},
	}
	pf := cmd.PersistentFlags()
	pf.BoolVar(&asJSON, "json", false, `print the policy list as JSON: {"phases", "running", "available"}`)
	t.register(pf)
	show := func(l supervisor.PolicyList) error {
		if asJSON {
			return printJSON(a.stdout, l)
		}
		printPolicies(a.stdout, l)
		return nil
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Show each phase's policy, shadow and counts, the policy processes and the policies on offer",
		Long: `Shows, for each phase, its policy and shadow policy, how many decisions
the policy made, how many fell back to the built-in round robin (the policy
failed or was too slow), and how often the shadow agreed; then the policy
processes (pid, state, restarts, last error); then the policy plugins the
plugin directory offers.`,
		Example: `  supervisor policy list
  supervisor policy list --json | jq '.phases[] | {phase, policy}'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := t.client()
			if err != nil {
				return err
			}
			l, err := c.Policies(cmd.Context())
			if err != nil {
				return err
			}
			return show(l)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "set PHASE NAME",
		Short: "Make policy NAME the policy of PHASE, live, make before break",
		Long: `Swaps PHASE's policy live, make before break: starts policy plugin NAME
(phased-policy-NAME in the plugin directory) if it is not running, asks it
for a trial schedule, and only when it answers makes it PHASE's policy;
requests in flight keep the instances they were given. A policy that fails
the trial leaves the old one in place.`,
		Example:           `  supervisor policy set transformer leastloaded`,
		Args:              exactArgs(2, "want `policy set PHASE NAME`"),
		ValidArgsFunction: t.completePhasePolicy,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := t.client()
			if err != nil {
				return err
			}
			l, err := c.SetPolicy(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return show(l)
		},
	})
	var off bool
	shadow := &cobra.Command{
		Use:   "shadow (PHASE NAME | --off PHASE)",
		Short: "Run policy NAME beside PHASE's policy, counting how often it agrees; --off stops it",
		Long: `Runs policy NAME as PHASE's shadow: it is asked on every request as
well, its choice is compared with the live policy's and counted, and never
used. ` + "`policy list`" + ` shows the agreement. --off PHASE removes the shadow.`,
		Example: `  supervisor policy shadow transformer p2c
  supervisor policy shadow --off transformer`,
		Args: func(cmd *cobra.Command, args []string) error {
			if off {
				return exactArgs(1, "want `policy shadow --off PHASE`")(cmd, args)
			}
			return exactArgs(2, "want `policy shadow PHASE NAME` or `policy shadow --off PHASE`")(cmd, args)
		},
		ValidArgsFunction: t.completePhasePolicy,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := t.client()
			if err != nil {
				return err
			}
			name := ""
			if !off {
				name = args[1]
			}
			l, err := c.SetShadow(cmd.Context(), args[0], name)
			if err != nil {
				return err
			}
			return show(l)
		},
	}
	shadow.Flags().BoolVar(&off, "off", false, "remove PHASE's shadow policy")
	cmd.AddCommand(shadow)
	return cmd
}

// exactArgs wants n arguments, and says what in msg otherwise.
func exactArgs(n int, msg string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s, got %s", msg, arguments(len(args)))
		}
		return nil
	}
}

// completePhasePolicy completes PHASE from the supervisor's phases, then
// NAME from the policies its plugin directory offers.
func (t *target) completePhasePolicy(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	c, err := t.client()
	if err != nil || len(args) > 1 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
	defer cancel()
	l, err := c.Policies(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	if len(args) == 0 {
		for _, p := range l.Phases {
			out = append(out, p.Phase)
		}
	} else {
		out = l.Available
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// printPolicies shows each phase's policies and counts, the policy
// processes, and the policies the plugin directory offers.
func printPolicies(w io.Writer, l supervisor.PolicyList) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tPOLICY\tDECISIONS\tFALLBACKS\tSHADOW\tAGREES")
	for _, p := range l.Phases {
		shadow, agree := "-", "-"
		if p.Shadow != "" {
			shadow = p.Shadow
			agree = fmt.Sprintf("%d/%d", p.ShadowAgree, p.ShadowCalls)
			if p.ShadowErrors > 0 {
				agree += fmt.Sprintf(" (%d failed)", p.ShadowErrors)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", p.Phase, p.Policy, p.Decisions, p.Fallbacks, shadow, agree)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tPID\tSTATE\tRESTARTS\tLAST ERROR")
	for _, p := range l.Running {
		pid := "-"
		if p.PID != 0 {
			pid = fmt.Sprint(p.PID)
		}
		fmt.Fprintf(tw, "phased-policy-%s\t%s\t%s\t%d\t%s\n", p.Name, pid, p.State, p.Restarts, p.LastError)
	}
	tw.Flush()
	fmt.Fprintf(w, "\navailable: %s\n", strings.Join(l.Available, ", "))
}

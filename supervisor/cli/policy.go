package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/phased/phased/supervisor"
)

// policy is `supervisor policy list|set|shadow`.
func policy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newClientFlags("policy", stderr)
	off := f.Bool("off", false, "with shadow: remove the phase's shadow policy")
	asJSON := f.Bool("json", false, "print the result as JSON")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	var l supervisor.PolicyList
	switch {
	case len(pos) == 1 && pos[0] == "list":
		l, err = c.Policies(ctx)
	case len(pos) == 3 && pos[0] == "set":
		l, err = c.SetPolicy(ctx, pos[1], pos[2])
	case len(pos) == 3 && pos[0] == "shadow" && !*off:
		l, err = c.SetShadow(ctx, pos[1], pos[2])
	case len(pos) == 2 && pos[0] == "shadow" && *off:
		l, err = c.SetShadow(ctx, pos[1], "")
	default:
		return fmt.Errorf("%w: want `policy list`, `policy set PHASE NAME`, `policy shadow PHASE NAME` or `policy shadow --off PHASE`", errUsage)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, l)
	}
	printPolicies(stdout, l)
	return nil
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

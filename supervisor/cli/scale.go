package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
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

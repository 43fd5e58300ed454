package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// The groups of the root's help.
const (
	groupRun    = "run"
	groupClient = "client"
	groupLocal  = "local"
	groupOther  = "other"
)

// groupOnly is the annotation of a verb that only groups sub-verbs
// (policy, journal): it runs only to say which sub-verb is missing.
const groupOnly = "group-only"

// helpWidth is the column the help's flag descriptions wrap at.
const helpWidth = 100

// root is the command tree, made anew for each Main call.
func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "supervisor",
		Short: "Supervise a disaggregated diffusion pipeline, and talk to its supervisor",
		Long: `supervisor runs phased: a diffusion model split into phases (encoder →
transformer → decoder), each phase a plugin process, tensors moving from
phase to phase, and a supervisor that schedules each request through a
policy plugin, keeps the processes alive and tears them down in order.

` + "`supervisor start`" + ` runs a supervisor in the foreground; the client verbs reach it
on its control socket, or on TCP with --addr HOST:PORT and a bearer token.
` + "`supervisor run`" + ` does start, submit, wait and release in one go.

Environment:
  ` + SocketEnv + `     the control socket (default $XDG_RUNTIME_DIR/phased/phased.sock,
                    else /tmp/phased-UID/phased.sock); --socket wins
  ` + AddrEnv + `       HOST:PORT of a supervisor's control API on TCP; --addr wins
  ` + TokenEnv + `      the bearer token for ` + AddrEnv + `; --token-file wins
  PHASED_STATE_DIR  the state directory of start and journal; --state-dir wins

` + exitCodesText(),
		Example: `  supervisor start &
  supervisor submit --prompt "a lighthouse at dusk" --seed 7 --wait
  supervisor status
  supervisor release
  supervisor run --prompt "a red fox in the snow" --count 4 --out out`,
		Version:           versionLine(),
		Args:              a.rootArgs,
		RunE:              func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SuggestionsMinimumDistance = 2
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(flagError)
	root.SetUsageFunc(usage)
	root.SetVersionTemplate("supervisor {{.Version}}\n")
	root.AddGroup(
		&cobra.Group{ID: groupRun, Title: "Run a supervisor:"},
		&cobra.Group{ID: groupClient, Title: "Talk to a running supervisor:"},
		&cobra.Group{ID: groupLocal, Title: "Work on the plugin and state directories (no supervisor needed):"},
		&cobra.Group{ID: groupOther, Title: "Other:"},
	)
	add := func(group string, cmds ...*cobra.Command) {
		for _, c := range cmds {
			c.GroupID = group
			root.AddCommand(c)
		}
	}
	add(groupRun, a.startCmd(), a.runCmd(), a.agentCmd())
	add(groupClient, a.submitCmd(), a.watchCmd(), a.statusCmd(), a.removeCmd(), a.policyCmd(), a.scaleCmd(), a.scalerCmd(), a.releaseCmd())
	add(groupLocal, a.validateCmd(), a.pluginsCmd(), a.journalCmd())
	add(groupLocal, a.tlsCmd())
	add(groupOther, a.versionCmd(), a.completionCmd(), a.docsCmd())
	root.SetHelpCommandGroupID(groupOther)
	return root
}

// rootArgs refuses an unknown verb, naming the verbs it may have meant.
func (a *app) rootArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown verb %q", args[0])
	if s := suggestVerbs(cmd, args[0]); len(s) > 0 {
		msg += "; did you mean " + orList(s) + "?"
	}
	return usagef("%s", msg)
}

func exitCodesText() string {
	var b strings.Builder
	b.WriteString("Exit codes:\n")
	for _, e := range exitCodes {
		fmt.Fprintf(&b, "  %-4d %s\n", e.code, e.meaning)
	}
	return strings.TrimRight(b.String(), "\n")
}

// usage is cobra's usage with the flags wrapped, and the root's line
// saying VERB.
func usage(c *cobra.Command) error {
	w := c.OutOrStderr()
	fmt.Fprint(w, "Usage:")
	switch {
	case !c.HasParent():
		fmt.Fprintf(w, "\n  %s VERB [flags]", c.CommandPath())
	case c.Annotations[groupOnly] != "":
		fmt.Fprintf(w, "\n  %s VERB [flags]", c.CommandPath())
	case c.Runnable():
		fmt.Fprintf(w, "\n  %s", c.UseLine())
		if c.HasAvailableSubCommands() {
			fmt.Fprintf(w, "\n  %s VERB [flags]", c.CommandPath())
		}
	}
	if len(c.Aliases) > 0 {
		fmt.Fprintf(w, "\n\nAliases:\n  %s", c.NameAndAliases())
	}
	if c.HasExample() {
		fmt.Fprintf(w, "\n\nExamples:\n%s", c.Example)
	}
	if c.HasAvailableSubCommands() {
		printVerbs(w, c)
	}
	if c.HasAvailableLocalFlags() {
		fmt.Fprintf(w, "\n\nFlags:\n%s", strings.TrimRight(c.LocalFlags().FlagUsagesWrapped(helpWidth), " \n"))
	}
	if c.HasAvailableInheritedFlags() {
		fmt.Fprintf(w, "\n\nFlags of %s:\n%s", c.Parent().CommandPath(), strings.TrimRight(c.InheritedFlags().FlagUsagesWrapped(helpWidth), " \n"))
	}
	if c.HasAvailableSubCommands() {
		fmt.Fprintf(w, "\n\nRun '%s VERB --help' for a verb's flags and examples.", c.CommandPath())
	}
	fmt.Fprintln(w)
	return nil
}

func printVerbs(w io.Writer, c *cobra.Command) {
	show := func(sub *cobra.Command) bool { return sub.IsAvailableCommand() || sub.Name() == "help" }
	line := func(sub *cobra.Command) {
		fmt.Fprintf(w, "\n  %-*s %s", sub.NamePadding(), sub.Name(), sub.Short)
	}
	if len(c.Groups()) == 0 {
		fmt.Fprint(w, "\n\nVerbs:")
		for _, sub := range c.Commands() {
			if show(sub) {
				line(sub)
			}
		}
		return
	}
	for _, g := range c.Groups() {
		fmt.Fprintf(w, "\n\n%s", g.Title)
		for _, sub := range c.Commands() {
			if sub.GroupID == g.ID && show(sub) {
				line(sub)
			}
		}
	}
}

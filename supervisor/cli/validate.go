package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/phased/phased/supervisor"
)

// validateCmd is `supervisor validate`: everything start checks, without
// starting the pipeline.
func (a *app) validateCmd() *cobra.Command {
	var sf startFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a config as start would, without starting the pipeline",
		Long: `Checks everything ` + "`supervisor start`" + ` checks, without starting the pipeline:
the config's syntax, every plugin binary present in the plugin directory
and matching its pin (the config's, or the lock file's), each plugin
starting and being the kind it is named for, and each phase's params as
its plugin checks them before it loads anything (no model is loaded).
Every problem is printed as FILE:LINE:COL: message, where the config
defines what is wrong. A plugin that cannot check its params before it
loads gets a note, not an error: its params are checked at start.

It exits 0 when the config would start, 2 when it would not.`,
		Example: `  supervisor validate --config phased.hcl
  supervisor validate --config examples/configs/t2v-tiny.hcl --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := sf.load()
			if err != nil {
				return err
			}
			problems := supervisor.Validate(cmd.Context(), cfg, supervisor.ValidateOptions{})
			if asJSON {
				type problem struct {
					At       string `json:"at"`
					Severity string `json:"severity"`
					Message  string `json:"message"`
				}
				out := struct {
					Valid    bool      `json:"valid"`
					Problems []problem `json:"problems"`
				}{Valid: !supervisor.HasErrors(problems), Problems: []problem{}}
				for _, p := range problems {
					sev := "error"
					if p.Severity == supervisor.SeverityNote {
						sev = "note"
					}
					out.Problems = append(out.Problems, problem{p.At.String(), sev, p.Message})
				}
				if err := printJSON(a.stdout, out); err != nil {
					return err
				}
			} else {
				for _, p := range problems {
					fmt.Fprintln(a.stdout, p.String())
				}
			}
			if supervisor.HasErrors(problems) {
				n := 0
				for _, p := range problems {
					if p.Severity != supervisor.SeverityNote {
						n++
					}
				}
				what := "1 error"
				if n != 1 {
					what = fmt.Sprintf("%d errors", n)
				}
				return &exitError{code: ExitUsage, err: fmt.Errorf("%s would not start: %s", configName(sf.config), what), quiet: !asJSON}
			}
			if !asJSON {
				fmt.Fprintf(a.stdout, "%s: valid\n", configName(sf.config))
			}
			return nil
		},
	}
	sf.registerConfig(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, `print one JSON object: {"valid", "problems": [{"at", "severity", "message"}]}`)
	return cmd
}

// configName is how a config is named to the user.
func configName(path string) string {
	if path == "" {
		return "the embedded default config"
	}
	return path
}

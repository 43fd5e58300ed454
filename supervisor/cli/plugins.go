package cli

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// pluginsCmd is `supervisor plugins [lock]`: it lists the plugins of the
// plugin directory with their version, SHA-256 and pin, or writes the
// lock file that pins them all.
func (a *app) pluginsCmd() *cobra.Command {
	var sf startFlags
	var asJSON bool
	var ignored string
	cmd := &cobra.Command{
		Use:   "plugins",
		Short: "List the plugin directory's plugins: kind, version, API versions, SHA-256, pin",
		Long: `Lists every plugin binary of the plugin directory (phased-phase-NAME and
phased-policy-NAME): it runs each one to ask its name, kind, version and
API versions, and hashes it. PIN says whether the config or the lock file
pins it, and whether the pin matches ("MISMATCH" when the binary changed).
` + "`plugins lock`" + ` writes the pins.`,
		Example: `  supervisor plugins
  supervisor plugins --config phased.hcl --json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			msg := fmt.Sprintf("unknown verb %q: want `plugins` or `plugins lock`", args[0])
			if s := suggestVerbs(cmd, args[0]); len(s) > 0 {
				msg += "; did you mean " + orList(s) + "?"
			}
			return usagef("%s", msg)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := sf.load()
			if err != nil {
				return err
			}
			dir := pluginDir(cfg)
			infos, err := supervisor.Catalog{Dir: dir}.Inspect(cmd.Context(), cfg.Pins)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, nonNil(infos))
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tNAME\tVERSION\tAPI\tSHA256\tPIN")
			for _, pi := range infos {
				pin := "-"
				switch {
				case pi.Pin == "":
				case pi.Pin == pi.SHA256:
					pin = "ok"
				default:
					pin = "MISMATCH (pinned " + pi.Pin[:min(12, len(pi.Pin))] + "…)"
				}
				version := pi.Version
				if pi.Error != "" {
					version = "(" + pi.Error + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", pi.Kind, pi.Name, version, pi.APIVersions, pi.SHA256, pin)
			}
			tw.Flush()
			fmt.Fprintf(a.stdout, "\nplugin directory: %s\n", dir)
			if missing := missingPlugins(cfg, infos); len(missing) > 0 {
				for _, m := range missing {
					fmt.Fprintln(a.stderr, m)
				}
				return &exitError{code: ExitNotFound, err: fmt.Errorf("%d plugins the config names are not in %s; see supervisor validate", len(missing), dir), quiet: !asJSON}
			}
			return nil
		},
	}
	pf := cmd.PersistentFlags()
	sf.registerConfig(pf)
	pf.BoolVar(&asJSON, "json", false, "print JSON: the list of plugins, or what lock pinned")
	// Accepted as before, and unused: listing starts no supervisor.
	pf.StringVar(&ignored, "log-level", "", "unused")
	pf.StringVar(&ignored, "socket", "", "unused")
	_ = pf.MarkHidden("log-level")
	_ = pf.MarkHidden("socket")

	cmd.AddCommand(&cobra.Command{
		Use:   "lock",
		Short: "Pin every plugin binary by SHA-256 in the lock file",
		Long: `Hashes every plugin binary of the plugin directory and writes the pins
to the lock file (` + config.LockFile + ` beside the config, or --lock FILE).
From then on ` + "`supervisor start`" + ` refuses a plugin binary that changed, naming
both hashes; run ` + "`plugins lock`" + ` again after an upgrade. A stale pin does not
stop lock from replacing it.`,
		Example: `  supervisor plugins lock --config phased.hcl
  supervisor plugins lock --lock /etc/phased/phased.lock.hcl`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := sf.load()
			if err != nil {
				// A stale pin must not stop the command that replaces it.
				lock := sf.lock
				sf.lock = os.DevNull
				cfg, err = sf.load()
				sf.lock = lock
			}
			if err != nil {
				return err
			}
			dir := pluginDir(cfg)
			infos, err := supervisor.Catalog{Dir: dir}.Inspect(cmd.Context(), cfg.Pins)
			if err != nil {
				return err
			}
			pins := map[string]string{}
			for _, pi := range infos {
				pins[pi.Binary] = pi.SHA256
			}
			path := sf.lockPath()
			if err := os.WriteFile(path, config.FormatLock(pins), 0o644); err != nil {
				return fmt.Errorf("write the lock file: %w", err)
			}
			if asJSON {
				return printJSON(a.stdout, struct {
					PluginDir string            `json:"plugin_dir"`
					LockFile  string            `json:"lock_file"`
					Pins      map[string]string `json:"pins"`
				}{dir, path, pins})
			}
			fmt.Fprintf(a.stdout, "pinned %d plugins of %s in %s\n", len(pins), dir, path)
			return nil
		},
	})
	return cmd
}

// missingPlugins names, at their place in the config, the phase and
// policy plugins cfg uses that are not among infos.
func missingPlugins(cfg *config.Config, infos []supervisor.PluginInfo) []string {
	have := map[string]bool{}
	for _, pi := range infos {
		have[pi.Kind+"/"+pi.Name] = true
	}
	var out []string
	seen := map[string]bool{}
	miss := func(at config.Pos, kind, name, phase string) {
		key := kind + "/" + name
		if have[key] || seen[key] {
			return
		}
		seen[key] = true
		where := ""
		if s := at.String(); s != "" {
			where = s + ": "
		}
		out = append(out, fmt.Sprintf("%sphase %q: %s plugin %q is not in the plugin directory", where, phase, kind, name))
	}
	for _, ph := range cfg.Phases {
		miss(ph.At.Plugin, "phase", ph.Plugin, ph.Name)
		miss(ph.At.Policy, "policy", ph.Policy, ph.Name)
	}
	return out
}

// nonNil is s, or an empty slice for nil, which JSON prints as [].
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// pluginDir is the plugin directory cfg names, or the default.
func pluginDir(cfg *config.Config) string {
	if cfg.PluginDir != "" {
		return cfg.PluginDir
	}
	return supervisor.DefaultPluginDir()
}

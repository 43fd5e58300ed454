package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/phased/phased/sdk"
)

// modulePath is phased's module, named when the build info has none (a
// test binary).
const modulePath = "github.com/phased/phased"

// VersionInfo is what `supervisor version` says: the build and the
// plugin protocol and API versions this supervisor speaks.
type VersionInfo struct {
	Module   string `json:"module"`
	Version  string `json:"version"`            // the module version; "(devel)" for a build from a checkout
	Revision string `json:"revision,omitempty"` // the VCS revision, when the build stamped one
	Time     string `json:"revision_time,omitempty"`
	Modified bool   `json:"modified,omitempty"` // the checkout had changes
	Go       string `json:"go"`
	Platform string `json:"platform"`
	// The go-plugin protocol version and the phase and policy API
	// versions the supervisor speaks (package sdk).
	ProtocolVersion  int `json:"protocol_version"`
	PhaseAPIVersion  int `json:"phase_api_version"`
	PolicyAPIVersion int `json:"policy_api_version"`
}

func versionInfo() VersionInfo {
	v := VersionInfo{Module: modulePath, Version: "(devel)", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
		ProtocolVersion: sdk.ProtocolVersion, PhaseAPIVersion: sdk.PhaseAPIVersion, PolicyAPIVersion: sdk.PolicyAPIVersion}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if bi.Main.Path != "" {
		v.Module = bi.Main.Path
	}
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		v.Go = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// versionLine is the one line of `supervisor --version`.
func versionLine() string {
	v := versionInfo()
	s := v.Version
	if v.Revision != "" {
		s += " (" + short(v.Revision)
		if v.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return fmt.Sprintf("%s, %s, plugin protocol %d, phase API %d, policy API %d", s, v.Go, v.ProtocolVersion, v.PhaseAPIVersion, v.PolicyAPIVersion)
}

func short(rev string) string { return rev[:min(12, len(rev))] }

func (a *app) versionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the supervisor's version, VCS revision, Go version and plugin API versions",
		Long: `Prints the module version and VCS revision this binary was built from (as
the Go toolchain stamped them: a build with -buildvcs=false has no
revision), the Go version and platform, and the versions of the plugin
contract it speaks: the go-plugin protocol version and the phase and
policy API versions. A plugin must speak them to be loaded.`,
		Example: `  supervisor version
  supervisor version --json | jq .phase_api_version`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			v := versionInfo()
			if asJSON {
				return printJSON(a.stdout, v)
			}
			rev := "unknown (built without VCS stamping)"
			if v.Revision != "" {
				rev = v.Revision
				if v.Modified {
					rev += " (modified)"
				}
				if v.Time != "" {
					rev += ", " + v.Time
				}
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "supervisor\t%s\n", v.Version)
			fmt.Fprintf(tw, "module\t%s\n", v.Module)
			fmt.Fprintf(tw, "revision\t%s\n", rev)
			fmt.Fprintf(tw, "go\t%s %s\n", v.Go, v.Platform)
			fmt.Fprintf(tw, "plugin protocol\t%d\n", v.ProtocolVersion)
			fmt.Fprintf(tw, "phase API\t%d\n", v.PhaseAPIVersion)
			fmt.Fprintf(tw, "policy API\t%d\n", v.PolicyAPIVersion)
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the versions as one JSON object")
	return cmd
}

func (a *app) completionCmd() *cobra.Command {
	shells := []string{"bash", "zsh", "fish"}
	return &cobra.Command{
		Use:   "completion (bash | zsh | fish)",
		Short: "Print the shell completion script for bash, zsh or fish",
		Long: `Prints the script that completes supervisor's verbs, flags and their
values in bash, zsh or fish. Request ids, phases and policies are completed
from the running supervisor.

bash (needs the bash-completion package):
  source <(supervisor completion bash)                    # this shell
  supervisor completion bash > /etc/bash_completion.d/supervisor

zsh (with compinit):
  supervisor completion zsh > "${fpath[1]}/_supervisor"

fish:
  supervisor completion fish > ~/.config/fish/completions/supervisor.fish`,
		Example: `  source <(supervisor completion bash)
  supervisor completion zsh > "${fpath[1]}/_supervisor"`,
		ValidArgs: shells,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) != 1:
				return usagef("want one shell: bash, zsh or fish")
			case !slices.Contains(shells, args[0]):
				return usagef("unknown shell %q: want bash, zsh or fish", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(a.stdout, true)
			case "zsh":
				return root.GenZshCompletion(a.stdout)
			}
			return root.GenFishCompletion(a.stdout, true)
		},
	}
}

package cli

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/phased/phased/supervisor"
)

// stateDirHelp is the help of --state-dir where it defaults to the usual
// state directory.
const stateDirHelp = "state `DIR` holding the request journal (default: $PHASED_STATE_DIR, else $XDG_STATE_HOME/phased, else ~/.local/state/phased)"

// stateDir is the state directory flag names, or the default.
func stateDir(flag string) string {
	if flag != "" {
		return flag
	}
	return supervisor.DefaultStateDir()
}

// journalCmd is `supervisor journal check|repair`: it checks the request
// journal of a state directory, or keeps what still reads of a damaged one
// and sets the damaged file aside. Run it with no supervisor on that state
// directory (one holds the journal's lock).
func (a *app) journalCmd() *cobra.Command {
	var dir, ignored string
	var asJSON bool
	args, run := subVerbs("`journal check` or `journal repair`")
	cmd := &cobra.Command{
		Use:   "journal (check | repair)",
		Short: "Check the request journal, or keep what reads of a damaged one",
		Long: `The request journal (` + supervisor.JournalFile + ` in the state directory) holds every
accepted request until it ends, so that a supervisor started after a crash
finishes them. ` + "`journal check`" + ` reads it through; ` + "`journal repair`" + ` keeps the
requests that still read and sets the damaged file aside. Run them with no
supervisor on that state directory: a running one holds the journal's lock.`,
		Example: `  supervisor journal check
  supervisor journal repair --state-dir /var/lib/phased`,
		Args:        args,
		RunE:        run,
		Annotations: map[string]string{groupOnly: "true"},
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&dir, "state-dir", "", stateDirHelp)
	pf.BoolVar(&asJSON, "json", false, "print the outcome as JSON")
	pf.StringVar(&ignored, "socket", "", "unused")
	_ = pf.MarkHidden("socket")
	cmd.AddCommand(&cobra.Command{
		Use:   "check",
		Short: "Read the request journal through and say whether it is sound",
		Long: `Reads the request journal through. It exits 0 and counts the requests when
the journal is sound (or absent), and 1 with what is damaged and what to
do when it is not.`,
		Example: `  supervisor journal check --state-dir /var/lib/phased`,
		Args:    noArgs,
		RunE: func(*cobra.Command, []string) error {
			d := stateDir(dir)
			path := filepath.Join(d, supervisor.JournalFile)
			n, err := supervisor.CheckJournal(d)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, struct {
					Journal  string `json:"journal"`
					Sound    bool   `json:"sound"`
					Requests int    `json:"requests"`
				}{path, true, n})
			}
			fmt.Fprintf(a.stdout, "journal %s: sound, %d requests\n", path, n)
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "repair",
		Short: "Keep the requests that still read of a damaged journal; set the damaged file aside",
		Long: `Writes a new journal with every request that still reads from the old
one, and renames the old one to ` + supervisor.JournalFile + `.damaged-TIME beside it.`,
		Example: `  supervisor journal repair --state-dir /var/lib/phased`,
		Args:    noArgs,
		RunE: func(*cobra.Command, []string) error {
			d := stateDir(dir)
			path := filepath.Join(d, supervisor.JournalFile)
			kept, aside, err := supervisor.RepairJournal(d)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, struct {
					Journal string `json:"journal"`
					Kept    int    `json:"kept"`
					Damaged string `json:"damaged"`
				}{path, kept, aside})
			}
			fmt.Fprintf(a.stdout, "journal %s: kept %d requests; the damaged file is %s\n", path, kept, aside)
			return nil
		},
	})
	return cmd
}

package cli

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/phased/phased/supervisor"
)

// journal is `supervisor journal check|repair`: it checks the request
// journal of a state directory, or keeps what still reads of a damaged one
// and sets the damaged file aside. Run it with no supervisor on that state
// directory (one holds the journal's lock).
func journal(_ context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFlags("journal", stderr)
	stateDir := f.String("state-dir", supervisor.DefaultStateDir(), "state `DIR` whose journal to check (env PHASED_STATE_DIR)")
	f.socket = ""
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] != "check" && pos[0] != "repair" {
		return fmt.Errorf("%w: want `journal check` or `journal repair`", errUsage)
	}
	path := filepath.Join(*stateDir, supervisor.JournalFile)
	if pos[0] == "check" {
		n, err := supervisor.CheckJournal(*stateDir)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "journal %s: sound, %d requests\n", path, n)
		return nil
	}
	kept, aside, err := supervisor.RepairJournal(*stateDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "journal %s: kept %d requests; the damaged file is %s\n", path, kept, aside)
	return nil
}

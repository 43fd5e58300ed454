// Package cli is the supervisor's command line: `start` runs a supervisor in
// the foreground; `submit`, `status`, `remove`, `policy` and `release` talk to a
// running one over its control socket; `run` does start, submit, wait and
// release in one go.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// SocketEnv names the environment variable that sets the control socket.
const SocketEnv = "PHASED_SOCKET"

const usage = `usage: supervisor VERB [flags]

Verbs:
  start   [--config FILE]                 run a supervisor in the foreground
  submit  --prompt TEXT [--seed N] [--steps N] [--key KEY] [--wait] [--json]
                                          submit a request; print its id
  status  [--json]                        phases, instances, requests
  remove  REQUEST_ID                      ordered remove of a request's rooms
  policy  list | set PHASE NAME | shadow PHASE NAME | shadow --off PHASE
                                          show or change the phases' policies, live
  plugins [lock] [--config FILE] [--plugin-dir DIR] [--json]
                                          list plugins: version, SHA-256, pin; lock: pin them all
  release                                 ordered release; the supervisor exits
  run     [--config FILE] --prompt TEXT [--count N] [--out DIR] [--json]
                                          start, submit N requests, wait, release

Every verb takes --socket PATH (default $PHASED_SOCKET, else %s).
Run 'supervisor VERB --help' for a verb's flags.
`

// Main runs the command line with args (without the program name) and
// returns the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintf(stdout, usage, DefaultSocket())
		return 0
	}
	verbs := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"start":   start,
		"submit":  submit,
		"status":  status,
		"remove":  remove,
		"release": release,
		"run":     run,
		"policy":  policy,
		"plugins": plugins,
	}
	fn, ok := verbs[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "supervisor: unknown verb %q\n", args[0])
		fmt.Fprintf(stderr, usage, DefaultSocket())
		return 2
	}
	err := fn(context.Background(), args[1:], stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "supervisor %s: %v\n", args[0], err)
		return 2
	case errors.Is(err, errSilent):
		return 1
	}
	fmt.Fprintf(stderr, "supervisor %s: %v\n", args[0], err)
	return 1
}

var (
	errUsage  = errors.New("usage")
	errSilent = errors.New("failed") // already reported
)

// DefaultSocket is the control socket used when neither --socket nor
// $PHASED_SOCKET says: $XDG_RUNTIME_DIR/phased/phased.sock, or
// /tmp/phased-UID/phased.sock.
func DefaultSocket() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "phased", "phased.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("phased-%d", os.Getuid()), "phased.sock")
}

// flags is a verb's flag set with the --socket flag every verb has.
type flags struct {
	*flag.FlagSet
	socket string
}

func newFlags(verb string, stderr io.Writer) *flags {
	f := &flags{FlagSet: flag.NewFlagSet("supervisor "+verb, flag.ContinueOnError)}
	f.SetOutput(stderr)
	def := os.Getenv(SocketEnv)
	if def == "" {
		def = DefaultSocket()
	}
	f.StringVar(&f.socket, "socket", def, "control socket `PATH` (env "+SocketEnv+")")
	return f
}

// parse parses flags and positional arguments in any order and returns the
// positional ones.
func (f *flags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = f.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func noArgs(pos []string) error {
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, strings.Join(pos, " "))
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

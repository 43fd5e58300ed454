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
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/phased/phased/supervisor"
)

// SocketEnv names the environment variable that sets the control socket.
const SocketEnv = "PHASED_SOCKET"

// AddrEnv names the environment variable that sets the TCP address of the
// control API, and TokenEnv the one that holds its bearer token.
const (
	AddrEnv  = "PHASED_ADDR"
	TokenEnv = "PHASED_TOKEN"
)

const usage = `usage: supervisor VERB [flags]

Verbs:
  start   [--config FILE] [--listen HOST:PORT --token-file FILE]
                                          run a supervisor in the foreground
  submit  --prompt TEXT [--seed N] [--steps N] [--key KEY] [--wait] [--json]
                                          submit a request; print its id
  status  [--json]                        phases, instances, requests
  remove  REQUEST_ID                      ordered remove of a request's rooms
  policy  list | set PHASE NAME | shadow PHASE NAME | shadow --off PHASE
                                          show or change the phases' policies, live
  plugins [lock] [--config FILE] [--plugin-dir DIR] [--json]
                                          list plugins: version, SHA-256, pin; lock: pin them all
  release                                 ordered release; the supervisor exits
  journal check | repair [--state-dir DIR]
                                          check the request journal; keep what reads of a damaged one
  run     [--config FILE] --prompt TEXT [--count N] [--out DIR] [--json]
                                          start, submit N requests, wait, release

Every verb takes --socket PATH (default $PHASED_SOCKET, else %s).
submit, status, remove, policy and release take --addr HOST:PORT (default
$PHASED_ADDR) to reach a supervisor started with --listen instead, with the
token in $PHASED_TOKEN or --token-file FILE.
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
		"journal": journal,
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

// flags is a verb's flag set with the --socket flag every verb has, and
// --addr and --token-file for the verbs that newClientFlags makes.
type flags struct {
	*flag.FlagSet
	socket    string
	addr      string
	tokenFile string
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

// newClientFlags is newFlags with --addr and --token-file, for the verbs
// that talk to a running supervisor.
func newClientFlags(verb string, stderr io.Writer) *flags {
	f := newFlags(verb, stderr)
	f.StringVar(&f.addr, "addr", os.Getenv(AddrEnv), "reach the supervisor's control API on TCP at `HOST:PORT` (see start --listen) instead of the socket (env "+AddrEnv+")")
	f.StringVar(&f.tokenFile, "token-file", "", "with --addr: `FILE` holding the bearer token (default: env "+TokenEnv+")")
	return f
}

// client returns the client the flags ask for: TCP when --addr is set,
// else the unix socket.
func (f *flags) client() (*supervisor.Client, error) {
	if f.addr == "" {
		return supervisor.NewClient(f.socket), nil
	}
	if _, _, err := net.SplitHostPort(f.addr); err != nil {
		return nil, fmt.Errorf("%w: --addr %q is not HOST:PORT (e.g. 127.0.0.1:7070): %v", errUsage, f.addr, err)
	}
	var token string
	if f.tokenFile != "" {
		var err error
		if token, err = supervisor.ReadTokenFile(f.tokenFile); err != nil {
			return nil, err
		}
	} else if token = strings.TrimSpace(os.Getenv(TokenEnv)); token == "" {
		return nil, fmt.Errorf("%w: --addr %s needs the supervisor's bearer token: set $%s or give --token-file FILE", errUsage, f.addr, TokenEnv)
	}
	return supervisor.NewTCPClient(f.addr, token), nil
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

// Package cli is the supervisor's command line, built on cobra: `start`
// runs a supervisor in the foreground; `submit`, `watch`, `status`,
// `remove`, `policy` and `release` talk to a running one over its control
// socket (or TCP with --addr); `run` does start, submit, wait and release
// in one go; `plugins` and `journal` work on the plugin directory and the
// state directory with no supervisor; `version` and `completion` print
// what they say. Main is the entry point of cmd/supervisor and of the
// tests.
//
// Every verb that prints data takes --json; under --json an error is one
// JSON object on stderr, {"error": "...", "exit_code": N}.
//
// Exit codes, the same in `supervisor --help` and the README:
//
//	0    ok
//	1    a request failed, or the operation did
//	2    usage error: a bad flag or argument, or a config that does not parse
//	3    not found: no such request, phase or policy
//	4    no supervisor: nothing listens on the control socket or address
//	130  interrupted (Ctrl-C): `submit --wait` and `watch` detach, `run` releases its supervisor
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// SocketEnv names the environment variable that sets the control socket.
const SocketEnv = "PHASED_SOCKET"

// AddrEnv names the environment variable that sets the TCP address of the
// control API, and TokenEnv the one that holds its bearer token.
const (
	AddrEnv  = "PHASED_ADDR"
	TokenEnv = "PHASED_TOKEN"
)

// The exit codes of Main (see the package comment).
const (
	ExitOK           = 0
	ExitFailed       = 1
	ExitUsage        = 2
	ExitNotFound     = 3
	ExitNoSupervisor = 4
	ExitInterrupted  = 130
)

// exitCodes is the table of the package comment, for --help and docs.
var exitCodes = []struct {
	code    int
	meaning string
}{
	{ExitOK, "ok"},
	{ExitFailed, "a request failed, or the operation did"},
	{ExitUsage, "usage error: a bad flag or argument, or a config that does not parse"},
	{ExitNotFound, "not found: no such request, phase or policy"},
	{ExitNoSupervisor, "no supervisor: nothing listens on the control socket or address"},
	{ExitInterrupted, "interrupted (Ctrl-C): submit --wait and watch detach, run releases its supervisor"},
}

// The limits of a submission, as supervisor.Submission.Validate checks
// them; they appear in the flags' help.
const (
	maxPromptBytes = supervisor.MaxPromptLen
	maxSteps       = supervisor.MaxSteps
)

// Main runs the command line with args (without the program name) and
// returns the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	return newApp(os.Stdin, stdout, stderr).main(args)
}

// app is what the commands read and write: Main's streams, and the two
// things tests replace, Ctrl-C and the terminal.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// interruptible returns a context that Ctrl-C (SIGINT) ends, and its
	// stop.
	interruptible func(context.Context) (context.Context, context.CancelFunc)
	// terminal reports the size of the terminal w writes to; ok is false
	// when w is not a terminal.
	terminal func(w io.Writer) (width, height int, ok bool)
	now      func() time.Time
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *app {
	return &app{
		stdin: stdin, stdout: stdout, stderr: stderr,
		interruptible: func(ctx context.Context) (context.Context, context.CancelFunc) {
			return signal.NotifyContext(ctx, os.Interrupt)
		},
		terminal: terminalSize,
		now:      time.Now,
	}
}

func (a *app) main(args []string) int {
	if args == nil {
		args = []string{} // cobra reads os.Args when given nil
	}
	root := a.root()
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return ExitOK
	}
	code := exitCode(err)
	a.report(cmd, err, code, wantsJSON(cmd, args))
	return code
}

// exitError is an error with its exit code, and how to report it.
type exitError struct {
	code int
	err  error
	// usage: print the command's usage after the error (a mistake on
	// the command line).
	usage bool
	// quiet: already reported on stdout; said on stderr only under --json.
	quiet bool
	// plain: printed as it is, without the command's name.
	plain bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usagef is a mistake on the command line: exit 2, with the usage.
func usagef(format string, a ...any) error {
	return &exitError{code: ExitUsage, err: fmt.Errorf(format, a...), usage: true}
}

// badInput is a submission that Validate refused: exit 2, without the
// usage and without Validate's "bad request: " prefix.
func badInput(err error) error {
	msg := strings.TrimPrefix(err.Error(), supervisor.ErrBadInput.Error()+": ")
	return &exitError{code: ExitUsage, err: errors.New(msg)}
}

// exitCode maps an error to its exit code: what the commands said, else
// what the control API answered.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	switch {
	case errors.Is(err, supervisor.ErrNoSupervisor):
		return ExitNoSupervisor
	case errors.Is(err, supervisor.ErrNotFound):
		return ExitNotFound
	case errors.Is(err, config.ErrInvalid), errors.Is(err, supervisor.ErrBadParams):
		return ExitUsage
	}
	var ae *supervisor.APIError
	if errors.As(err, &ae) {
		switch {
		case ae.Code == http.StatusBadRequest, ae.Code == http.StatusRequestEntityTooLarge:
			return ExitUsage
		}
	}
	return ExitFailed
}

// report writes err on stderr: one JSON object under --json, else
// "supervisor VERB: message", and the usage after a usage error.
func (a *app) report(cmd *cobra.Command, err error, code int, asJSON bool) {
	var ee *exitError
	errors.As(err, &ee)
	if asJSON {
		_ = printJSON(a.stderr, struct {
			Error    string `json:"error"`
			ExitCode int    `json:"exit_code"`
		}{err.Error(), code})
		return
	}
	switch {
	case ee != nil && ee.quiet:
		return
	case ee != nil && ee.plain:
		fmt.Fprintln(a.stderr, err)
	default:
		fmt.Fprintf(a.stderr, "%s: %v\n", cmd.CommandPath(), err)
	}
	if ee != nil && ee.usage {
		fmt.Fprintf(a.stderr, "\n%s", cmd.UsageString())
	}
}

// wantsJSON reports whether --json was given to cmd, also when the
// command line failed to parse after it, or before it.
func wantsJSON(cmd *cobra.Command, args []string) bool {
	if f := cmd.Flags().Lookup("json"); f != nil && f.Value.String() == "true" {
		return true
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--json" || a == "--json=true" {
			return true
		}
	}
	return false
}

// flagError turns pflag's errors into usage errors, with the flags a
// misspelt one may have meant.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	var ne *pflag.NotExistError
	var ie *pflag.InvalidValueError
	var ne2 *strconv.NumError
	switch {
	case errors.As(err, &ne):
		typed, dashes := ne.GetSpecifiedName(), "--"
		if sh := ne.GetSpecifiedShortnames(); sh != "" {
			// -steps is read as the shorthands s, t, e, p, s.
			typed, dashes = sh, "-"
			msg = fmt.Sprintf("unknown flag: -%s", sh)
		}
		if s := suggestFlags(cmd, typed); len(s) > 0 {
			msg += "; did you mean " + orList(s) + "?"
		} else if dashes == "-" {
			msg += " (long flags take two dashes)"
		}
	case errors.As(err, &ie) && errors.As(err, &ne2):
		what := "not a whole number"
		if errors.Is(ne2.Err, strconv.ErrRange) {
			what = "out of range"
		}
		msg = fmt.Sprintf("invalid value %q for --%s: %s", ie.GetValue(), ie.GetFlag().Name, what)
	}
	return usagef("%s", msg)
}

// suggestFlags returns the flags of cmd whose names are close to typed.
func suggestFlags(cmd *cobra.Command, typed string) []string {
	var out []string
	typed = strings.ToLower(typed)
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		name := strings.ToLower(f.Name)
		maxDist := 1 // a short name is close to too many others at 2
		if len(typed) > 4 {
			maxDist = 2
		}
		if len(typed) >= 3 && levenshtein(typed, name) <= maxDist || len(typed) >= 2 && strings.HasPrefix(name, typed) {
			out = append(out, "--"+f.Name)
		}
	})
	return out
}

// suggestVerbs returns the sub-verbs of cmd close to typed, quoted.
func suggestVerbs(cmd *cobra.Command, typed string) []string {
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	var out []string
	for _, s := range cmd.SuggestionsFor(typed) {
		out = append(out, strconv.Quote(s))
	}
	return out
}

// orList joins "a", "a or b", "a, b or c".
func orList(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// DefaultSocket is the control socket used when neither --socket nor
// $PHASED_SOCKET says: $XDG_RUNTIME_DIR/phased/phased.sock, or
// /tmp/phased-UID/phased.sock.
func DefaultSocket() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "phased", "phased.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("phased-%d", os.Getuid()), "phased.sock")
}

// socketHelp is the help of every --socket flag that reaches a supervisor.
const socketHelp = "control socket `PATH` (default: $" + SocketEnv + ", else $XDG_RUNTIME_DIR/phased/phased.sock, else /tmp/phased-UID/phased.sock)"

// socketPath is the socket that --socket (flag), $PHASED_SOCKET or the
// default names.
func socketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv(SocketEnv); env != "" {
		return env
	}
	return DefaultSocket()
}

// target is where a client verb finds its supervisor: --socket, or --addr
// with --token-file.
type target struct {
	socket    string
	addr      string
	tokenFile string
}

func (t *target) register(fs *pflag.FlagSet) {
	fs.StringVar(&t.socket, "socket", "", socketHelp)
	fs.StringVar(&t.addr, "addr", "", "reach the control API on TCP at `HOST:PORT` (see start --listen) instead of the socket (default: $"+AddrEnv+")")
	fs.StringVar(&t.tokenFile, "token-file", "", "with --addr: `FILE` holding the bearer token (default: the token in $"+TokenEnv+")")
}

// address is the --addr in effect: the flag, else $PHASED_ADDR.
func (t *target) address() string {
	if t.addr != "" {
		return t.addr
	}
	return os.Getenv(AddrEnv)
}

// where names the supervisor the client reaches: its address or socket.
func (t *target) where() string {
	if addr := t.address(); addr != "" {
		return addr
	}
	return socketPath(t.socket)
}

// client returns the client the flags ask for: TCP when --addr (or
// $PHASED_ADDR) is set, else the unix socket.
func (t *target) client() (*supervisor.Client, error) {
	addr := t.address()
	if addr == "" {
		return supervisor.NewClient(socketPath(t.socket)), nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, usagef("--addr %q is not HOST:PORT (e.g. 127.0.0.1:7070): %v", addr, err)
	}
	var token string
	if t.tokenFile != "" {
		var err error
		if token, err = supervisor.ReadTokenFile(t.tokenFile); err != nil {
			return nil, err
		}
	} else if token = strings.TrimSpace(os.Getenv(TokenEnv)); token == "" {
		return nil, usagef("--addr %s needs the supervisor's bearer token: set $%s or give --token-file FILE", addr, TokenEnv)
	}
	return supervisor.NewTCPClient(addr, token), nil
}

// noArgs is the Args of the verbs that take none.
func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", strings.Join(args, " "))
	}
	return nil
}

// oneID is the Args of the verbs that take exactly one request id.
func oneID(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usagef("want exactly one REQUEST_ID, got %s", arguments(len(args)))
	}
	return nil
}

// subVerbs is the Args and RunE of a verb that only groups sub-verbs
// (policy, journal): it names them, and the one a misspelt word meant.
func subVerbs(want string) (cobra.PositionalArgs, func(*cobra.Command, []string) error) {
	check := func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usagef("want %s", want)
		}
		msg := fmt.Sprintf("unknown verb %q: want %s", args[0], want)
		if s := suggestVerbs(cmd, args[0]); len(s) > 0 {
			msg += "; did you mean " + orList(s) + "?"
		}
		return usagef("%s", msg)
	}
	return check, func(cmd *cobra.Command, args []string) error { return check(cmd, args) }
}

// arguments says "1 argument", "2 arguments".
func arguments(n int) string {
	if n == 1 {
		return "1 argument"
	}
	return fmt.Sprintf("%d arguments", n)
}

func printJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// wantOneOf checks a flag's value against its allowed values.
func wantOneOf(flag, value string, allowed ...string) error {
	if slices.Contains(allowed, value) {
		return nil
	}
	return usagef("--%s %q: want %s", flag, value, orList(allowed))
}

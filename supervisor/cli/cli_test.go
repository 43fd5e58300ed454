package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

func runMain(t *testing.T, env map[string]string, args ...string) (string, string, int) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	code := Main(args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestMainUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{nil, 0, "Usage:\n  supervisor VERB [flags]", ""},
		{[]string{"help"}, 0, "Talk to a running supervisor:", ""},
		{[]string{"--help"}, 0, "Exit codes:\n  0    ok\n  1    a request failed", ""},
		{[]string{"bogus"}, 2, "", `supervisor: unknown verb "bogus"`},
		{[]string{"stauts"}, 2, "", `unknown verb "stauts"; did you mean "start" or "status"?`},
		{[]string{"remove"}, 2, "", "want exactly one REQUEST_ID, got 0 arguments"},
		{[]string{"remove", "a", "b"}, 2, "", "want exactly one REQUEST_ID, got 2 arguments"},
		{[]string{"status", "x", "y"}, 2, "", `unexpected argument "x y"`},
		{[]string{"status", "r000001", "--state", "done"}, 2, "", "--state lists requests; it does not go with a REQUEST_ID"},
		{[]string{"status", "--state", "finished"}, 2, "", `--state "finished": want queued, running, done or failed`},
		{[]string{"status", "--limit", "0"}, 2, "", "--limit 0: want 1 to 1000"},
		{[]string{"release", "now"}, 2, "", `unexpected argument "now"`},
		{[]string{"submit", "--steps", "many"}, 2, "", `invalid value "many" for --steps: not a whole number`},
		{[]string{"submit", "--sed", "3"}, 2, "", "supervisor submit: unknown flag: --sed; did you mean --seed?"},
		{[]string{"submit", "-steps", "3"}, 2, "", "unknown flag: -steps; did you mean --steps?"},
		{[]string{"submit", "--prompt", "a", "--prompt", "b"}, 2, "", "submit takes one prompt"},
		{[]string{"submit", "--prompt", "x", "--steps", "0"}, 2, "", "steps must be between 1 and 10000, got 0"},
		{[]string{"submit", "--prompt", "x", "--key", strings.Repeat("k", 257)}, 2, "", "key is 257 bytes; at most 256 are accepted"},
		{[]string{"submit"}, 2, "", "a prompt is required: give --prompt TEXT or --prompt-file FILE"},
		{[]string{"run", "--prompt", ""}, 2, "", "prompt must not be empty"},
		{[]string{"run"}, 2, "", "a prompt is required"},
		{[]string{"run", "--prompt", "a fox", "--prompt", ""}, 2, "", "prompt must not be empty"},
		{[]string{"run", "--prompt", "x", "--count", "0"}, 2, "", "--count must be at least 1"},
		{[]string{"policy"}, 2, "", "want `policy list`, `policy set PHASE NAME`"},
		{[]string{"policy", "lst"}, 2, "", `unknown verb "lst"`},
		{[]string{"policy", "set", "transformer"}, 2, "", "want `policy set PHASE NAME`, got 1 argument"},
		{[]string{"policy", "shadow", "--off", "a", "b"}, 2, "", "want `policy shadow --off PHASE`, got 2 arguments"},
		{[]string{"plugins", "lokc"}, 2, "", `unknown verb "lokc": want ` + "`plugins` or `plugins lock`" + `; did you mean "lock"?`},
		{[]string{"completion"}, 2, "", "want one shell: bash, zsh or fish"},
		{[]string{"completion", "pwsh"}, 2, "", `unknown shell "pwsh"`},
		{[]string{"start", "--config", "/nonexistent/phased.hcl"}, 1, "", "/nonexistent/phased.hcl: no such file or directory"},
	}
	for _, tt := range tests {
		out, errOut, code := runMain(t, nil, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.err) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d, %q, %q", tt.args, code, out, errOut, tt.code, tt.out, tt.err)
		}
		if code == 2 && strings.Count(errOut, "Usage:") > 1 {
			t.Errorf("%v: the usage is printed %d times:\n%s", tt.args, strings.Count(errOut, "Usage:"), errOut)
		}
	}
}

// TestSocketFlag: --socket wins over $PHASED_SOCKET, which wins over the
// default, and flags may follow positional arguments.
func TestSocketFlag(t *testing.T) {
	_, errOut, code := runMain(t, map[string]string{SocketEnv: "/tmp/phased-env-x.sock"}, "status")
	if code != ExitNoSupervisor || !strings.Contains(errOut, "no supervisor at /tmp/phased-env-x.sock") {
		t.Errorf("env socket: exit %d, %q", code, errOut)
	}
	_, errOut, code = runMain(t, map[string]string{SocketEnv: "/tmp/phased-env-x.sock"}, "remove", "r000001", "--socket", "/tmp/phased-flag-y.sock")
	if code != ExitNoSupervisor || !strings.Contains(errOut, "no supervisor at /tmp/phased-flag-y.sock") {
		t.Errorf("flag socket after a positional argument: exit %d, %q", code, errOut)
	}
}

func TestDefaultSocket(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if got := DefaultSocket(); got != "/run/user/1000/phased/phased.sock" {
		t.Errorf("DefaultSocket = %q", got)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got := DefaultSocket(); !strings.HasSuffix(got, "/phased.sock") || !strings.Contains(got, "/phased-") {
		t.Errorf("DefaultSocket = %q", got)
	}
}

// serveTCP serves the control API of a supervisor that was never started
// on a unix socket and on TCP on loopback, and returns the socket, the
// address and a token file.
func serveTCP(t *testing.T) (socket, addr, tokenFile string) {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pcli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket = filepath.Join(dir, "phased.sock")
	tokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := supervisor.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	tcp, token, err := supervisor.ListenTCP("127.0.0.1:0", tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	api := supervisor.NewAPI(supervisor.New(config.Default(), supervisor.Options{}), ln, socket, nil)
	if err := api.AddTCP(tcp, token); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- api.Serve() }()
	t.Cleanup(func() {
		if err := api.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	return socket, tcp.Addr().String(), tokenFile
}

const testToken = "cli-test-token-0123456789"

// TestAddrFlag: the client verbs reach a supervisor over TCP with --addr or
// $PHASED_ADDR and the token from $PHASED_TOKEN or --token-file, and get
// the same answers as on the socket.
func TestAddrFlag(t *testing.T) {
	socket, addr, tokenFile := serveTCP(t)
	noTCP := map[string]string{AddrEnv: "", TokenEnv: ""}
	want, errOut, code := runMain(t, noTCP, "status", "--json", "--socket", socket)
	if code != 0 || !strings.Contains(want, `"pid":`) {
		t.Fatalf("status on the socket: exit %d, %q, %q", code, want, errOut)
	}
	open := filepath.Join(t.TempDir(), "open-token")
	if err := os.WriteFile(open, []byte(testToken), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		out  string // stdout, exactly, when code is 0
		err  string // in stderr
	}{
		{"flag and token env", map[string]string{AddrEnv: "", TokenEnv: testToken}, []string{"status", "--json", "--addr", addr}, 0, want, ""},
		{"addr env and token file", map[string]string{AddrEnv: addr, TokenEnv: ""}, []string{"status", "--json", "--token-file", tokenFile}, 0, want, ""},
		{"addr wins over socket", map[string]string{AddrEnv: addr, TokenEnv: testToken, SocketEnv: "/tmp/phased-nobody-here.sock"}, []string{"status", "--json"}, 0, want, ""},
		{"token file wins over env", map[string]string{AddrEnv: addr, TokenEnv: "wrong-token-0123456789"}, []string{"status", "--json", "--token-file", tokenFile}, 0, want, ""},
		{"submit over TCP", map[string]string{AddrEnv: addr, TokenEnv: testToken}, []string{"submit", "--prompt", "x"}, 1, "", "takes no new requests"},
		{"policy over TCP", map[string]string{AddrEnv: addr, TokenEnv: testToken}, []string{"policy", "set", "transformer", "roundrobin"}, 1, "", "supervisor policy set: the supervisor is releasing"},
		{"wrong token", map[string]string{AddrEnv: "", TokenEnv: "wrong-token-0123456789"}, []string{"status", "--addr", addr}, 1, "", "supervisor status: supervisor at " + addr + " refused the call: wrong bearer token"},
		{"no token", noTCP, []string{"remove", "r000001", "--addr", addr}, 2, "", "--addr " + addr + " needs the supervisor's bearer token: set $PHASED_TOKEN or give --token-file FILE"},
		{"open token file", noTCP, []string{"release", "--addr", addr, "--token-file", open}, 1, "", "permissions 0644 for " + open + " are too open"},
		{"not host:port", map[string]string{AddrEnv: "", TokenEnv: testToken}, []string{"status", "--addr", "http://" + addr}, 2, "", "is not HOST:PORT"},
		{"nobody there", map[string]string{AddrEnv: closed, TokenEnv: testToken}, []string{"status"}, 4, "", "no supervisor at " + closed + " (start one with `supervisor start --listen " + closed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runMain(t, tt.env, tt.args...)
			if code != tt.code || tt.code == 0 && out != tt.out || !strings.Contains(errOut, tt.err) {
				t.Fatalf("%v: exit %d, stdout %q, stderr %q; want exit %d, %q, %q", tt.args, code, out, errOut, tt.code, tt.out, tt.err)
			}
		})
	}
}

// TestStartListen: start refuses --listen without a usable token file
// before it starts any plugin, and leaves no socket behind.
func TestStartListen(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "pcli-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	socket := filepath.Join(dir, "phased.sock")
	open := filepath.Join(dir, "token")
	if err := os.WriteFile(open, []byte(testToken), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "phased.hcl")
	if err := os.WriteFile(cfg, []byte("control {\n  listen = \"127.0.0.1:0\"\n}\nphase \"encoder\" { plugin = \"encoder\" }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const noToken = "control API on 127.0.0.1:0: no token file: give --token-file FILE (or token_file in the config's control block)"
	tests := []struct {
		args []string
		err  string
	}{
		{[]string{"start", "--socket", socket, "--listen", "127.0.0.1:0"}, noToken},
		{[]string{"start", "--socket", socket, "--config", cfg}, noToken},
		{[]string{"start", "--socket", socket, "--listen", "127.0.0.1:0", "--token-file", open}, "permissions 0644 for " + open + " are too open"},
		{[]string{"start", "--socket", socket, "--config", cfg, "--token-file", open}, "permissions 0644 for " + open},
		{[]string{"start", "--socket", socket, "--listen", "127.0.0.1:0", "--token-file", filepath.Join(dir, "missing")}, filepath.Join(dir, "missing") + ": no such file or directory"},
	}
	for _, tt := range tests {
		_, errOut, code := runMain(t, nil, tt.args...)
		if code != 1 || !strings.HasPrefix(errOut, "supervisor start: ") || !strings.Contains(errOut, tt.err) {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 with %q", tt.args, code, errOut, tt.err)
		}
		if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%v: the socket is left behind (%v)", tt.args, err)
		}
	}
	out, errOut, code := runMain(t, nil, "start", "-h")
	if code != 0 || !strings.Contains(out, "TCP is plain HTTP") || !strings.Contains(out, "--token-file FILE") || errOut != "" {
		t.Errorf("start -h: exit %d, %q, %q", code, out, errOut)
	}
}

// TestJournalVerb: `journal check` says a sound journal is sound and a
// damaged one is not, with what to do; `journal repair` sets the damaged
// one aside and keeps what reads.
func TestJournalVerb(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if out, errOut, code := runMain(t, nil, "journal", "check", "--state-dir", dir); code != 0 || !strings.Contains(out, "sound, 0 requests") {
		t.Fatalf("check of no journal: exit %d, %q, %q", code, out, errOut)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, supervisor.JournalFile)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runMain(t, nil, "journal", "check", "--state-dir", dir)
	if code != 1 || !strings.Contains(errOut, "the request journal is damaged: "+path+": the file is empty") {
		t.Fatalf("check of an empty journal: exit %d, %q", code, errOut)
	}
	out, errOut, code := runMain(t, nil, "journal", "repair", "--state-dir", dir)
	if code != 0 || !strings.Contains(out, "kept 0 requests; the damaged file is "+path+".damaged-") {
		t.Fatalf("repair: exit %d, %q, %q", code, out, errOut)
	}
	if out, _, code := runMain(t, nil, "journal", "check", "--state-dir", dir); code != 0 || !strings.Contains(out, "sound") {
		t.Fatalf("check after repair: exit %d, %q", code, out)
	}
	if _, errOut, code := runMain(t, nil, "journal", "fix"); code != 2 || !strings.Contains(errOut, "want `journal check` or `journal repair`") {
		t.Fatalf("journal fix: exit %d, %q", code, errOut)
	}
}

// TestHelpTexts: every verb and sub-verb says its arguments in Use and
// has Short, Long and Example; `supervisor --help` carries the exit
// codes, and each verb's --help is its own.
func TestHelpTexts(t *testing.T) {
	a, _, _ := testApp("", 0, 0)
	root := a.root()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Short == "" || sub.Long == "" || sub.Example == "" {
				t.Errorf("%s: Short %q, Long %d bytes, Example %d bytes", sub.CommandPath(), sub.Short, len(sub.Long), len(sub.Example))
			}
			walk(sub)
		}
	}
	walk(root)
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"Exit codes:\n", "  3    not found: no such request, phase or policy\n", "  4    no supervisor", "  130  interrupted (Ctrl-C)"}},
		{[]string{"remove", "--help"}, []string{"Usage:\n  supervisor remove ID [flags]\n", "idempotent", "--socket PATH"}},
		{[]string{"status", "--help"}, []string{"Usage:\n  supervisor status [ID] [flags]\n", "--state STATE", "--limit N", "timeline"}},
		{[]string{"policy", "set", "--help"}, []string{"Usage:\n  supervisor policy set PHASE NAME [flags]\n", "make before break"}},
		{[]string{"policy", "shadow", "-h"}, []string{"supervisor policy shadow (PHASE NAME | --off PHASE)", "--off"}},
		{[]string{"help", "policy", "list"}, []string{"Usage:\n  supervisor policy list [flags]\n"}},
		{[]string{"submit", "--help"}, []string{"--prompt-file FILE", "at most 65536 bytes", "1 to 10000", "at most 256 bytes", "Ctrl-C detaches (exit 130)"}},
		{[]string{"run", "--help"}, []string{"--prompt-file FILE", "--log-format FORMAT", "repeat it"}},
		{[]string{"start", "--help"}, []string{"--log-level LEVEL", "trace, debug, info, warn or error", "--log-format FORMAT"}},
	} {
		out, errOut, code := runMain(t, nil, tt.args...)
		for _, w := range tt.want {
			if code != 0 || !strings.Contains(out, w) || errOut != "" {
				t.Errorf("%v: exit %d, stderr %q; no %q in\n%s", tt.args, code, errOut, w, out)
			}
		}
	}
}

// TestExitCodes: no supervisor is 4 for every client verb, with one JSON
// object on stderr under --json; release of a supervisor that is gone
// is 0; an unknown request is 3; a bad log level or format is 2, naming
// the allowed values.
func TestExitCodes(t *testing.T) {
	nobody := filepath.Join(t.TempDir(), "nobody.sock")
	env := map[string]string{SocketEnv: nobody, AddrEnv: "", TokenEnv: ""}
	want := "no supervisor at " + nobody + " (start one with `supervisor start`)"
	for _, args := range [][]string{{"status"}, {"status", "r000001"}, {"submit", "--prompt", "x"}, {"submit", "--prompt", "x", "--wait"},
		{"remove", "r000001"}, {"watch", "r000001"}, {"policy", "list"}, {"policy", "set", "transformer", "p2c"}} {
		_, errOut, code := runMain(t, env, args...)
		if code != ExitNoSupervisor || errOut != "supervisor "+strings.Join(args[:1], " ")+": "+want+"\n" && !strings.Contains(errOut, ": "+want) {
			t.Errorf("%v: exit %d, %q; want 4 and %q", args, code, errOut, want)
		}
		_, errOut, code = runMain(t, env, append(args, "--json")...)
		var e struct {
			Error    string `json:"error"`
			ExitCode int    `json:"exit_code"`
		}
		if code != ExitNoSupervisor || json.Unmarshal([]byte(errOut), &e) != nil || e.Error != want || e.ExitCode != 4 || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v --json: exit %d, stderr %q", args, code, errOut)
		}
	}
	out, errOut, code := runMain(t, env, "release")
	if code != 0 || out != "no supervisor at "+nobody+": nothing to release\n" || errOut != "" {
		t.Errorf("release, none there: exit %d, %q, %q", code, out, errOut)
	}
	out, _, code = runMain(t, env, "release", "--json")
	if code != 0 || out != `{"supervisor":"`+nobody+`","released":false,"message":"no supervisor at `+nobody+`: nothing to release"}`+"\n" {
		t.Errorf("release --json, none there: exit %d, %q", code, out)
	}
	_, errOut, code = runMain(t, env, "submit", "--bogus", "--json")
	if code != ExitUsage || errOut != `{"error":"unknown flag: --bogus","exit_code":2}`+"\n" {
		t.Errorf("usage error under --json: exit %d, %q", code, errOut)
	}

	socket, _, _ := serveTCP(t)
	env[SocketEnv] = socket
	for _, args := range [][]string{{"status", "r999999"}, {"remove", "r999999"}, {"watch", "r999999"}} {
		_, errOut, code := runMain(t, env, args...)
		if code != ExitNotFound || !strings.Contains(errOut, `no such request: "r999999"`) {
			t.Errorf("%v: exit %d, %q; want 3", args, code, errOut)
		}
	}
	// Empty lists print as [], not null.
	out, errOut, code = runMain(t, env, "status", "--json")
	if code != 0 || !strings.Contains(out, `"requests":[]`) || strings.Contains(out, "null") {
		t.Errorf("status --json with no requests: exit %d, %q, %q", code, out, errOut)
	}
	out, _, code = runMain(t, env, "status")
	if code != 0 || !regexp.MustCompile(`(?m)^supervisor pid \d+, \S+\n  run dir .*\n  artifacts  \S+`).MatchString(out) {
		t.Errorf("status: exit %d, %q", code, out)
	}

	for _, args := range [][]string{{"start", "--log-level", "verbose"}, {"run", "--prompt", "x", "--log-level", "verbose"}} {
		_, errOut, code := runMain(t, env, args...)
		if code != ExitUsage || !strings.Contains(errOut, `--log-level "verbose": want trace, debug, info, warn or error`) {
			t.Errorf("%v: exit %d, %q", args, code, errOut)
		}
	}
	_, errOut, code = runMain(t, env, "start", "--log-format", "xml")
	if code != ExitUsage || !strings.Contains(errOut, `--log-format "xml": want text or json`) {
		t.Errorf("--log-format xml: exit %d, %q", code, errOut)
	}
	bad := filepath.Join(t.TempDir(), "bad.hcl")
	if err := os.WriteFile(bad, []byte("phase \"encoder\" {\n  instances = \n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runMain(t, env, "start", "--config", bad)
	if code != ExitUsage || !strings.Contains(errOut, bad+":2:") || strings.Contains(errOut, "Usage:") {
		t.Errorf("config syntax: exit %d, %q", code, errOut)
	}
}

// TestLogFormat: --log-format json makes the supervisor's log one JSON
// object per line.
func TestLogFormat(t *testing.T) {
	var b bytes.Buffer
	sf := startFlags{logLevel: "info", logFormat: "json"}
	sf.logger(&b).Info("control socket ready", "socket", "/x")
	var line map[string]any
	if err := json.Unmarshal(b.Bytes(), &line); err != nil || line["@message"] != "control socket ready" || line["socket"] != "/x" {
		t.Errorf("json log %q (%v)", b.String(), err)
	}
	b.Reset()
	sf = startFlags{logLevel: "warn", logFormat: "text"}
	l := sf.logger(&b)
	l.Info("hidden")
	l.Warn("shown")
	if strings.Contains(b.String(), "hidden") || !strings.Contains(b.String(), "[WARN]  supervisor: shown") {
		t.Errorf("text log at warn: %q", b.String())
	}
}

func TestVersion(t *testing.T) {
	out, _, code := runMain(t, nil, "version", "--json")
	var v VersionInfo
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Module != "github.com/phased/phased" || v.Go != runtime.Version() ||
		v.ProtocolVersion != sdk.ProtocolVersion || v.PhaseAPIVersion != sdk.PhaseAPIVersion || v.PolicyAPIVersion != sdk.PolicyAPIVersion {
		t.Errorf("version --json: exit %d, %q", code, out)
	}
	out, _, code = runMain(t, nil, "version")
	if code != 0 || !regexp.MustCompile(`(?m)^supervisor +\S+\nmodule +github.com/phased/phased\nrevision +.+\ngo +go1\.\S+ \w+/\w+\nplugin protocol +1\nphase API +1\npolicy API +1\n$`).MatchString(out) {
		t.Errorf("version: exit %d, %q", code, out)
	}
	out, _, code = runMain(t, nil, "--version")
	if code != 0 || !strings.HasPrefix(out, "supervisor ") || !strings.Contains(out, "plugin protocol 1, phase API 1, policy API 1") {
		t.Errorf("--version: exit %d, %q", code, out)
	}
}

func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{"bash": "__start_supervisor", "zsh": "#compdef supervisor", "fish": "complete -c supervisor"} {
		out, errOut, code := runMain(t, nil, "completion", shell)
		if code != 0 || !strings.Contains(out, want) || errOut != "" {
			t.Errorf("completion %s: exit %d, %d bytes, no %q; %q", shell, code, len(out), want, errOut)
		}
	}
	// What the scripts call: verbs, sub-verbs and flag values.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"__complete", "sta"}, "start\tRun a supervisor"},
		{[]string{"__complete", "policy", ""}, "shadow\t"},
		{[]string{"__complete", "status", "--state", ""}, "running\n"},
		{[]string{"__complete", "start", "--log-level", ""}, "trace\n"},
	} {
		out, _, code := runMain(t, nil, tt.args...)
		if code != 0 || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d, no %q in %q", tt.args, code, tt.want, out)
		}
	}
}

// TestDocs: docs prints every verb with its flags, replaces the README's
// section between the markers, and --check fails on a stale one; the
// README of this repository is up to date.
func TestDocs(t *testing.T) {
	ref, _, code := runMain(t, nil, "docs")
	for _, w := range []string{"| `supervisor submit (--prompt TEXT \\| --prompt-file FILE)` |",
		"<details><summary><code>supervisor policy shadow</code></summary>\n\n```\nsupervisor policy shadow (PHASE NAME | --off PHASE)\n```\n",
		"Also the flags of `supervisor policy`.", "| `--prompt-file FILE` |", "| 130 | interrupted (Ctrl-C)", "| `--steps N` | denoising steps N, 1 to 10000 (default 20) |"} {
		if code != 0 || !strings.Contains(ref, w) {
			t.Errorf("docs: exit %d, no %q", code, w)
		}
	}
	if strings.Contains(ref, "supervisor docs</code>") || strings.Contains(ref, os.Getenv("HOME")+"/") {
		t.Errorf("docs shows the hidden docs verb or a path of this environment")
	}
	file := filepath.Join(t.TempDir(), "README.md")
	stale := "# x\n\n" + docsBegin + "\nold\n" + docsEnd + "\n\nafter\n"
	if err := os.WriteFile(file, []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runMain(t, nil, "docs", "--check", file); code != 1 || !strings.Contains(errOut, "is stale: run make docs") {
		t.Errorf("docs --check of a stale file: exit %d, %q", code, errOut)
	}
	if _, errOut, code := runMain(t, nil, "docs", "--update", file); code != 0 {
		t.Fatalf("docs --update: exit %d, %q", code, errOut)
	}
	got, _ := os.ReadFile(file)
	if string(got) != "# x\n\n"+docsBegin+"\n"+ref+docsEnd+"\n\nafter\n" {
		t.Errorf("updated file:\n%s", got)
	}
	if _, errOut, code := runMain(t, nil, "docs", "--check", file); code != 0 {
		t.Errorf("docs --check after --update: exit %d, %q", code, errOut)
	}
	if _, errOut, code := runMain(t, nil, "docs", "--check", "../../README.md"); code != 0 {
		t.Errorf("README.md: %s", errOut)
	}
}

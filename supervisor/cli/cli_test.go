package cli

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
		{nil, 0, "usage: supervisor VERB", ""},
		{[]string{"help"}, 0, "Verbs:", ""},
		{[]string{"bogus"}, 2, "", `unknown verb "bogus"`},
		{[]string{"remove"}, 2, "", "want exactly one REQUEST_ID"},
		{[]string{"remove", "a", "b"}, 2, "", "want exactly one REQUEST_ID"},
		{[]string{"status", "x", "y"}, 2, "", `unexpected argument "x y"`},
		{[]string{"release", "now"}, 2, "", `unexpected argument "now"`},
		{[]string{"submit", "--steps", "many"}, 2, "", `invalid value "many" for flag -steps`},
		{[]string{"run", "--prompt", ""}, 2, "", "prompt must not be empty"},
		{[]string{"run"}, 2, "", "prompt must not be empty"},
		{[]string{"run", "--prompt", "a fox", "--prompt", ""}, 2, "", "prompt must not be empty"},
		{[]string{"run", "--prompt", "x", "--count", "0"}, 2, "", "--count must be at least 1"},
		{[]string{"start", "--config", "/nonexistent/phased.hcl"}, 1, "", "/nonexistent/phased.hcl: no such file or directory"},
	}
	for _, tt := range tests {
		out, errOut, code := runMain(t, nil, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.err) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d, %q, %q", tt.args, code, out, errOut, tt.code, tt.out, tt.err)
		}
	}
}

// TestSocketFlag: --socket wins over $PHASED_SOCKET, which wins over the
// default, and flags may follow positional arguments.
func TestSocketFlag(t *testing.T) {
	_, errOut, code := runMain(t, map[string]string{SocketEnv: "/tmp/phased-env-x.sock"}, "status")
	if code != 1 || !strings.Contains(errOut, "no supervisor at /tmp/phased-env-x.sock") {
		t.Errorf("env socket: exit %d, %q", code, errOut)
	}
	_, errOut, code = runMain(t, map[string]string{SocketEnv: "/tmp/phased-env-x.sock"}, "remove", "r000001", "--socket", "/tmp/phased-flag-y.sock")
	if code != 1 || !strings.Contains(errOut, "no supervisor at /tmp/phased-flag-y.sock") {
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
		{"policy over TCP", map[string]string{AddrEnv: addr, TokenEnv: testToken}, []string{"policy", "set", "transformer", "roundrobin"}, 1, "", "supervisor policy: the supervisor is releasing"},
		{"wrong token", map[string]string{AddrEnv: "", TokenEnv: "wrong-token-0123456789"}, []string{"status", "--addr", addr}, 1, "", "supervisor status: supervisor at " + addr + " refused the call: wrong bearer token"},
		{"no token", noTCP, []string{"remove", "r000001", "--addr", addr}, 2, "", "--addr " + addr + " needs the supervisor's bearer token: set $PHASED_TOKEN or give --token-file FILE"},
		{"open token file", noTCP, []string{"release", "--addr", addr, "--token-file", open}, 1, "", "permissions 0644 for " + open + " are too open"},
		{"not host:port", map[string]string{AddrEnv: "", TokenEnv: testToken}, []string{"status", "--addr", "http://" + addr}, 2, "", "is not HOST:PORT"},
		{"nobody there", map[string]string{AddrEnv: closed, TokenEnv: testToken}, []string{"status"}, 1, "", "no supervisor at " + closed + " (start one with `supervisor start --listen " + closed},
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
	if code != 0 || !strings.Contains(errOut, "TCP is plain HTTP") || !strings.Contains(errOut, "-token-file FILE") {
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

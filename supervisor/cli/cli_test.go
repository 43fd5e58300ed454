package cli

import (
	"bytes"
	"strings"
	"testing"
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

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// startFails runs `supervisor start` and returns its stderr; it must exit 1.
func startFails(t *testing.T, dir string, args ...string) string {
	t.Helper()
	return startExits(t, dir, 1, args...)
}

// startExits runs `supervisor start`, which must exit with code, and
// returns its stderr.
func startExits(t *testing.T, dir string, code int, args ...string) string {
	t.Helper()
	socket := filepath.Join(dir, "ctl", "phased.sock")
	cmd := exec.Command(supervisorBin, append([]string{"start", "--socket", socket, "--state-dir", filepath.Join(dir, "state")}, args...)...)
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != code {
		t.Fatalf("start %v: %v, want exit status %d; output:\n%s", args, err, code, out)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("control socket %s left behind after a failed start", socket)
	}
	return string(out)
}

func TestStartErrors(t *testing.T) {
	badDir := shortDir(t)
	for _, name := range []string{"apiv2", "proto2", "policy", "misnamed"} {
		if err := os.Symlink(filepath.Join(binDir, "badplugin"), filepath.Join(badDir, "phased-phase-"+name)); err != nil {
			t.Fatal(err)
		}
	}
	crash := "#!/bin/sh\necho 'loading weights from /models/wan2.1' >&2\necho 'fatal: CUDA out of memory' >&2\nexit 3\n"
	if err := os.WriteFile(filepath.Join(badDir, "phased-phase-crash"), []byte(crash), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"phased-policy-roundrobin", "phased-phase-encoder"} {
		if err := os.Symlink(filepath.Join(pluginDir, n), filepath.Join(badDir, n)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		config string
		want   []string
	}{
		// A config that does not parse is a usage error: exit 2.
		{"syntax error", "phase \"encoder\" {\n  plugin = \"encoder\"\n  instances = \n}\n",
			[]string{"phased.hcl:3:", "Invalid expression"}},
		{"type error", "phase \"encoder\" {\n  plugin = \"encoder\"\n  instances = \"many\"\n}\n",
			[]string{"phased.hcl:3:", "a number is required"}},
		{"unknown phase plugin", "plugin_dir = \"" + pluginDir + "\"\nphase \"encoder\" { plugin = \"encodr\" }\n",
			[]string{`phase plugin "encodr"`, filepath.Join(pluginDir, "phased-phase-encodr") + " does not exist",
				"plugins in " + pluginDir + ": ", "phased-phase-encoder"}},
		{"unknown policy", "plugin_dir = \"" + pluginDir + "\"\npolicy = \"fastest\"\nphase \"encoder\" { plugin = \"encoder\" }\n",
			[]string{`policy plugin "fastest"`, "phased-policy-fastest does not exist"}},
		{"api version mismatch", "plugin_dir = \"" + badDir + "\"\nphase \"encoder\" { plugin = \"apiv2\" }\n",
			[]string{"encoder-0", "speaks phase API versions [2]; this supervisor speaks version 1"}},
		{"protocol mismatch", "plugin_dir = \"" + badDir + "\"\nphase \"encoder\" { plugin = \"proto2\" }\n",
			[]string{"encoder-0", "Plugin version: 2", "Client versions: [1]"}},
		{"wrong kind", "plugin_dir = \"" + badDir + "\"\nphase \"encoder\" { plugin = \"policy\" }\n",
			[]string{"says it is a policy plugin"}},
		{"name differs from the file's", "plugin_dir = \"" + badDir + "\"\nphase \"encoder\" { plugin = \"misnamed\" }\n",
			[]string{"encoder-0", `it says its name is "bad", but its file phased-phase-misnamed names it "misnamed"`}},
		{"plugin exits during start", "plugin_dir = \"" + badDir + "\"\nphase \"encoder\" { plugin = \"encoder\" }\nphase \"decoder\" { plugin = \"crash\" }\n",
			[]string{"decoder-0", "last stderr lines", "loading weights from /models/wan2.1", "fatal: CUDA out of memory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			cfg := filepath.Join(dir, "phased.hcl")
			if err := os.WriteFile(cfg, []byte(tt.config), 0o644); err != nil {
				t.Fatal(err)
			}
			code := 1
			if strings.HasSuffix(tt.name, " error") {
				code = 2
			}
			out := startExits(t, dir, code, "--config", cfg)
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestClientErrors(t *testing.T) {
	dir := shortDir(t)
	missing := filepath.Join(dir, "nobody.sock")
	for _, verb := range [][]string{{"status"}, {"submit", "--prompt", "x"}, {"remove", "r000001"}, {"watch", "r000001"}} {
		_, errOut, code := cli(t, missing, verb...)
		want := "no supervisor at " + missing + " (start one with `supervisor start`)"
		if code != 4 || !strings.Contains(errOut, want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 4 and %q", verb, code, errOut, want)
		}
	}
	// Releasing a supervisor that is gone has nothing to do.
	if out, errOut, code := cli(t, missing, "release"); code != 0 || out != "no supervisor at "+missing+": nothing to release\n" {
		t.Errorf("release with no supervisor: exit %d, %q, %q", code, out, errOut)
	}

	p := startSupervisor(t, dir, writeConfig(t, dir, pipeline))
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"submit", "--prompt", ""}, 2, "prompt must not be empty"},
		{[]string{"submit", "--prompt", "x", "--steps", "0"}, 2, "steps must be between 1 and 10000, got 0"},
		{[]string{"submit", "--prompt", "x", "--steps", "-3"}, 2, "steps must be between 1 and 10000, got -3"},
		{[]string{"remove", "r999999"}, 3, `no such request: "r999999"`},
		{[]string{"status", "r999999"}, 3, `no such request: "r999999"`},
		{[]string{"watch", "r999999"}, 3, `no such request: "r999999"`},
		{[]string{"policy", "set", "upscaler", "roundrobin"}, 3, `no such phase "upscaler"`},
		{[]string{"policy", "set", "transformer", "nosuch"}, 3, `policy plugin "nosuch"`},
		{[]string{"remove"}, 2, "want exactly one REQUEST_ID"},
		{[]string{"frobnicate"}, 2, `unknown verb "frobnicate"`},
		{[]string{"submit", "--promt", "x"}, 2, "unknown flag: --promt; did you mean --prompt?"},
	}
	for _, tt := range tests {
		_, errOut, code := cli(t, p.socket, tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tt.args, code, errOut, tt.code, tt.want)
		}
	}
	// A second supervisor on the same socket refuses to start.
	second := exec.Command(supervisorBin, "start", "--socket", p.socket, "--state-dir", filepath.Join(dir, "state2"), "--config", writeConfig(t, dir, pipeline))
	out, err := second.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "a supervisor is already running at "+p.socket) {
		t.Errorf("second start on the same socket: %v, output %q", err, out)
	}
	if _, err := p.client.Status(context.Background()); err != nil {
		t.Errorf("first supervisor after a second start: %v", err)
	}
	p.release(t)
}

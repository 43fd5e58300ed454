package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/phased/phased/supervisor"
)

// TestCLIFollowAndDetach: Ctrl-C during `submit --wait` detaches (exit
// 130) and the request goes on; `watch` follows it to its end with the
// exit code of its outcome; `status ID` shows its events (and its
// timeline); `status --state` lists one state; a second release finds
// nothing to release and exits 0.
func TestCLIFollowAndDetach(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, "params = { height = 64, width = 64 }\n"+pipeline))

	// submit --wait off a terminal: the id, then one line per event.
	cmd := exec.Command(supervisorBin, "submit", "--prompt", "long", "--seed", "1", "--steps", "10000", "--wait")
	cmd.Env = append(os.Environ(), "PHASED_SOCKET="+p.socket)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatalf("submit --wait printed no id: %s", stderr.String())
	}
	id := lines.Text()
	seen := ""
	for lines.Scan() {
		seen += lines.Text() + "\n"
		if strings.Contains(lines.Text(), "encoder") && strings.Contains(lines.Text(), "done in") {
			break // the transformer computes its 10000 steps
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, stdout)
	err = cmd.Wait()
	var ee *exec.ExitError
	want := "detached; the request goes on: follow it with `supervisor watch " + id + "`\n"
	if !errors.As(err, &ee) || ee.ExitCode() != 130 || stderr.String() != want || !strings.Contains(seen, "  accepted\n") {
		t.Fatalf("Ctrl-C during submit --wait: %v, stdout %q, stderr %q; want exit 130 and %q", err, seen, stderr.String(), want)
	}
	out, errOut, code := cli(t, p.socket, "status", id, "--json")
	var info supervisor.RequestInfo
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || info.State != supervisor.StateRunning {
		t.Fatalf("status after detaching: exit %d, %s %s; want it running", code, out, errOut)
	}

	// watch follows it to its end: removed, it failed, exit 1. The
	// remove may come before or after watch connects: both follow it to
	// its end.
	watch := exec.Command(supervisorBin, "watch", id)
	watch.Env = append(os.Environ(), "PHASED_SOCKET="+p.socket)
	var watchOut, watchErr strings.Builder
	watch.Stdout, watch.Stderr = &watchOut, &watchErr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := cli(t, p.socket, "remove", id); code != 0 || strings.TrimSpace(out) != id+" failed (removed)" {
		t.Fatalf("remove: exit %d, %q, %q", code, out, errOut)
	}
	if err := watch.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.HasSuffix(watchOut.String(), id+" failed: removed\n") {
		t.Errorf("watch of a removed request: %v, stdout %q, stderr %q; want exit 1", err, watchOut.String(), watchErr.String())
	}

	out, errOut, code = cli(t, p.socket, "submit", "--prompt", "short", "--seed", "2", "--steps", "2", "--wait")
	if code != 0 || !strings.Contains(out, " done: ") {
		t.Fatalf("submit --wait: exit %d, %q, %q", code, out, errOut)
	}
	done := strings.SplitN(out, "\n", 2)[0]
	result := out[strings.Index(out, done+" done: "):] // "ID done: ARTIFACT\n  sha256 HASH\n"
	out, errOut, code = cli(t, p.socket, "watch", done)
	if code != 0 || !strings.HasSuffix(out, result) {
		t.Errorf("watch of a done request: exit %d, %q, %q; want it to end in %q", code, out, errOut, result)
	}
	out, errOut, code = cli(t, p.socket, "status", done)
	if code != 0 || !strings.HasPrefix(out, done+" done ") || !strings.Contains(out, "\nevents:\n") || !strings.Contains(out, "accepted") {
		t.Errorf("status %s: exit %d, %q, %q", done, code, out, errOut)
	}
	if full, err := p.client.Request(t.Context(), done); err != nil {
		t.Error(err)
	} else if len(full.Timeline) > 0 && !strings.Contains(out, "\ntimeline:\n  SPAN") {
		t.Errorf("status %s does not show the timeline:\n%s", done, out)
	}
	out, errOut, code = cli(t, p.socket, "status", "--state", "done", "--json")
	var st supervisor.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Requests) != 1 || st.Requests[0].ID != done {
		t.Errorf("status --state done: exit %d, %s %s", code, out, errOut)
	}

	p.release(t)
	if out, errOut, code := cli(t, p.socket, "release"); code != 0 || out != "no supervisor at "+p.socket+": nothing to release\n" {
		t.Errorf("second release: exit %d, %q, %q", code, out, errOut)
	}
}

// TestValidate: `supervisor validate` checks a config as start would,
// without starting it: a good one exits 0; a params typo, a missing
// plugin and a pin mismatch exit 2, each at FILE:LINE:COL; `plugins
// --config` says which plugins a config names are missing (exit 3).
func TestValidate(t *testing.T) {
	dir := shortDir(t)
	write := func(name, body string) string {
		path := dir + "/" + name
		src := "plugin_dir = \"" + pluginDir + "\"\n" + body
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("good.hcl", pipeline)
	typo := write("typo.hcl", "phase \"encoder\" { plugin = \"encoder\" }\nphase \"transformer\" {\n  plugin = \"transformer\"\n  params = { widht = 32 }\n}\nphase \"decoder\" { plugin = \"decoder\" }\n")
	missing := write("missing.hcl", "phase \"encoder\" { plugin = \"encoder\" }\nphase \"decoder\" { plugin = \"decodr\" }\n")
	pinned := write("pinned.hcl", "pin \"phased-phase-decoder\" { sha256 = \""+strings.Repeat("0", 64)+"\" }\n"+pipeline)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"validate", "--config", good}, 0, good + ": valid"},
		{[]string{"validate", "--config", typo}, 2, typo + `:5:14: phase "transformer": widht = "32": unknown param; did you mean "width"?`},
		{[]string{"validate", "--config", missing}, 2, missing + `:3:19: phase "decoder": plugin not found: phase plugin "decodr"`},
		{[]string{"validate", "--config", pinned}, 2, pinned + `:2:1: phase "decoder": plugin binary does not match its pin`},
		// start checks params the same way, before any model loads.
		{[]string{"start", "--config", typo, "--state-dir", dir + "/state"}, 2, typo + `:5:14: widht = "32": unknown param; did you mean "width"?`},
		{[]string{"plugins", "--config", missing}, 3, missing + `:3:19: phase "decoder": phase plugin "decodr" is not in the plugin directory`},
	}
	for _, tt := range tests {
		out, errOut, code := cli(t, dir+"/none.sock", tt.args...)
		if code != tt.code || !strings.Contains(out+errOut, tt.want) {
			t.Errorf("supervisor %v: exit %d\nstdout %s\nstderr %s\nwant exit %d with %q", tt.args, code, out, errOut, tt.code, tt.want)
		}
	}
	// Nothing was left running: validate stops every plugin it started.
	if left := leftovers(t, dir, nil); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

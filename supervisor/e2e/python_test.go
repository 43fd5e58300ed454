package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

// Python phases (examples/toy-python, on the SDK in sdk/python) run
// through the real supervisor: the ports of the built-in phases, alone or
// between the Go ones.

// python is the interpreter the Python phases name on their #! line.
const python = "/usr/bin/python3"

// pythonPhases are the Python phases of examples/ (directory, then
// names), linked into the test's plugin directory by TestMain.
var pythonPhases = map[string][]string{
	"toy-python": {"pyencoder", "pytransformer", "pydecoder"},
	"t2v-tiny":   {"t2v-encoder", "t2v-transformer", "t2v-decoder"},
}

// linkPythonPhases links the Python phases into dir.
func linkPythonPhases(dir string) error {
	for example, names := range pythonPhases {
		for _, name := range names {
			src := filepath.Join(moduleRoot, "examples", example, "phased-phase-"+name)
			if err := os.Symlink(src, filepath.Join(dir, "phased-phase-"+name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// needPython fails the test, saying what to install, when the Debian
// packages the Python SDK needs are missing (make deps installs them).
func needPython(t *testing.T) {
	t.Helper()
	out, err := exec.Command(python, "-c", "import grpc, google.protobuf, zmq, numpy, xxhash, cryptography").CombinedOutput()
	if err != nil {
		t.Fatalf("the Python SDK needs %s with Debian's python3-grpcio python3-protobuf python3-zmq python3-numpy python3-xxhash python3-cryptography (make deps installs them): %v\n%s", python, err, out)
	}
}

// TestPythonTransformerBetweenGo: the Python port of the transformer
// between the Go encoder and decoder, over shm and over zmq, gives the
// built-in pipeline's artifacts byte for byte.
func TestPythonTransformerBetweenGo(t *testing.T) {
	needPython(t)
	for _, backend := range []string{"shm", "zmq"} {
		t.Run(backend, func(t *testing.T) {
			hosts := [3]string{"", "", ""}
			if backend == "zmq" {
				hosts = [3]string{`host = "a"`, `host = "b"`, `host = "c"`}
			}
			dir := shortDir(t)
			p := startSupervisor(t, dir, writeConfig(t, dir, fmt.Sprintf(`
phase "encoder" {
  plugin = "encoder"
  %s
}
phase "transformer" {
  plugin    = "pytransformer"
  instances = 2
  %s
}
phase "decoder" {
  plugin = "decoder"
  %s
}
`, hosts[0], hosts[1], hosts[2])))
			infos := p.submitAll(t, 6, func(i int) supervisor.Submission {
				return supervisor.Submission{Prompt: fmt.Sprintf("python %d", i), Seed: int64(i) - 3, Steps: i + 1}
			})
			for i, info := range infos {
				if info.Backends[0] != backend || info.Backends[1] != backend {
					t.Fatalf("%s: backends %v, want %s", info.ID, info.Backends, backend)
				}
				got, err := os.ReadFile(info.Artifact)
				if err != nil {
					t.Fatal(err)
				}
				if want := reference(t, fmt.Sprintf("python %d", i), int64(i)-3, i+1); !bytes.Equal(got, want) {
					t.Fatalf("%s: artifact (%d bytes) differs from the all-Go reference (%d bytes)", info.ID, len(got), len(want))
				}
			}
			p.release(t)
		})
	}
}

// pythonPipeline is the all-Python pipeline, its transformer in two
// instances.
const pythonPipeline = `
phase "encoder" { plugin = "pyencoder" }
phase "transformer" {
  plugin    = "pytransformer"
  instances = 2
}
phase "decoder" { plugin = "pydecoder" }
`

// TestPythonPipeline: three Python phases serve concurrent requests; a
// request removed while its transformer computes ends failed (removed)
// with no room left open; release leaves no process, socket file or
// segment.
func TestPythonPipeline(t *testing.T) {
	needPython(t)
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, "params = { height = 64, width = 64 }\n"+pythonPipeline))
	ctx := context.Background()
	infos := p.submitAll(t, 4, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: "all python", Seed: int64(i), Steps: 2}
	})
	for _, info := range infos {
		got, err := os.ReadFile(info.Artifact)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(got, []byte("GIF89a")) || !bytes.HasSuffix(got, []byte{0x3b}) {
			t.Fatalf("%s: %s is not a whole GIF (%d bytes)", info.ID, info.Artifact, len(got))
		}
	}

	// Remove a request while the Python transformer computes.
	id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "long", Seed: 1, Steps: 10000})
	if err != nil {
		t.Fatal(err)
	}
	waitComputing(t, p, id)
	out, errOut, code := cli(t, p.socket, "remove", id)
	if code != 0 || strings.TrimSpace(out) != id+" failed (removed)" {
		t.Fatalf("remove: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	pids, runDir := settled(t, p, "after remove")
	p.submitAll(t, 1, func(int) supervisor.Submission {
		return supervisor.Submission{Prompt: "after remove", Seed: 9, Steps: 1}
	})

	p.release(t)
	for _, pid := range pids {
		if running(pid) {
			t.Errorf("Python phase process %d still alive after release", pid)
		}
	}
	if left := leftovers(t, runDir, pids); len(left) > 0 {
		t.Errorf("left behind after release: %v", left)
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Errorf("run dir %s still exists after release (%v)", runDir, err)
	}
}

// TestPythonPhaseKilled: a Python transformer killed with SIGKILL in the
// middle of a request is handled like a Go one: the request is dispatched
// again and ends with the reference artifact, and the instance is
// restarted.
func TestPythonPhaseKilled(t *testing.T) {
	needPython(t)
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, `
phase "encoder" { plugin = "encoder" }
phase "transformer" {
  plugin    = "pytransformer"
  instances = 2
  restart { backoff = "50ms" }
}
phase "decoder" { plugin = "decoder" }
`))
	ctx := context.Background()
	// Long enough (seconds in numpy) that the kill lands while it computes.
	const steps = 10000
	id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "killed", Seed: 4, Steps: steps})
	if err != nil {
		t.Fatal(err)
	}
	waitComputing(t, p, id)
	info, err := p.client.Request(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	victim := instanceStatus(t, p, info.Instances["transformer"])
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s (pid %d): %v", victim.ID, victim.PID, err)
	}
	done := watchDone(t, p, id, "killed", 4, steps)
	if done.Attempts != 2 {
		t.Errorf("attempts = %d, want 2", done.Attempts)
	}
	_, retry := lastEvent(t, p, id, "retry")
	if !strings.Contains(retry, "instance "+victim.ID) || !strings.Contains(retry, "signal: killed") {
		t.Errorf("retry event %q; want instance %s killed", retry, victim.ID)
	}
	if !eventually(20*time.Second, func() bool { return instanceStatus(t, p, victim.ID).State == "ready" }) {
		t.Fatalf("instance %s not ready again: %+v", victim.ID, instanceStatus(t, p, victim.ID))
	}
	if l := leftovers(t, "/nonexistent", []int{victim.PID}); len(l) > 0 {
		t.Errorf("the killed instance left %v", l)
	}
	p.release(t)
}

// t2vPipeline is examples/t2v-tiny's model in three phases, one torch
// thread each, so that its arithmetic is the same in every process.
const t2vPipeline = `
params = { threads = "1" }
phase "encoder"     { plugin = "t2v-encoder" }
phase "transformer" { plugin = "t2v-transformer" }
phase "decoder"     { plugin = "t2v-decoder" }
`

// TestT2VThroughSupervisor: the tiny text-to-video model, run by
// `supervisor run` with two prompts, gives for each the GIF its three
// phases give called in one process (examples/t2v-tiny/local.py), byte for
// byte.
func TestT2VThroughSupervisor(t *testing.T) {
	needPython(t)
	dir := shortDir(t)
	cfg := writeConfig(t, dir, t2vPipeline)
	prompts := []string{"a red circle moving left", "a blue square moving up"}
	const seed, steps = 11, 6
	cmd := exec.Command(supervisorBin, "run", "--config", cfg, "--prompt", prompts[0], "--prompt", prompts[1],
		"--seed", fmt.Sprint(seed), "--steps", fmt.Sprint(steps), "--json", "--out", filepath.Join(dir, "out"))
	cmd.Env = append(os.Environ(), "PHASED_SOCKET="+filepath.Join(dir, "run.sock"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("supervisor run: %v\n%s\n%s", err, out, stderrOf(err))
	}
	var results []struct{ ID, State, Artifact, Reason, Prompt string }
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var r struct{ ID, State, Artifact, Reason, Prompt string }
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("supervisor run --json: %v\n%s", err, out)
		}
		results = append(results, r)
	}
	if len(results) != len(prompts) {
		t.Fatalf("%d results, want %d:\n%s", len(results), len(prompts), out)
	}
	local := filepath.Join(dir, "local")
	for _, r := range results {
		if r.State != supervisor.StateDone {
			t.Fatalf("%s (%q): %s, %s", r.ID, r.Prompt, r.State, r.Reason)
		}
		got, err := os.ReadFile(r.Artifact)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := exec.Command(python, filepath.Join(moduleRoot, "examples", "t2v-tiny", "local.py"), "--param", "threads=1",
			local, r.ID, fmt.Sprint(seed), fmt.Sprint(steps), r.Prompt).Output()
		if err != nil {
			t.Fatalf("local.py: %v\n%s", err, stderrOf(err))
		}
		want, err := os.ReadFile(strings.TrimSpace(string(ref)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(got, []byte("GIF89a")) || !bytes.Equal(got, want) {
			t.Errorf("%s (%q): the supervisor's GIF (%d bytes) differs from the one the phases make in one process (%d bytes)", r.ID, r.Prompt, len(got), len(want))
		}
	}
}

// stderrOf is what a failed command wrote on stderr.
func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// TestT2VResume: the tiny text-to-video model's transformer, in two
// instances saving its state every 5 steps, is killed once it reports
// step 15 of 20; the retry, on the other instance, resumes at 15 (at
// least 10) and the GIF is the one its phases make in one process
// without any interruption, byte for byte.
func TestT2VResume(t *testing.T) {
	needPython(t)
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, `
params = { threads = "1" }
phase "encoder"     { plugin = "t2v-encoder" }
phase "transformer" {
  plugin           = "t2v-transformer"
  instances        = 2
  checkpoint_every = 5
  restart { backoff = "50ms" }
}
phase "decoder"     { plugin = "t2v-decoder" }
`))
	const prompt, seed, steps = "a green triangle moving right", 5, 20
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: prompt, Seed: seed, Steps: steps})
	if err != nil {
		t.Fatal(err)
	}
	killed := ""
	if _, err := p.client.Watch(ctx, id, func(info supervisor.RequestInfo) {
		for _, pp := range info.Progress {
			if killed == "" && info.Attempts == 1 && pp.Phase == "transformer" && pp.Done >= 15 {
				killed = pp.Instance
				if err := syscall.Kill(instanceStatus(t, p, pp.Instance).PID, syscall.SIGKILL); err != nil {
					t.Errorf("kill %s: %v", pp.Instance, err)
				}
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	info, err := p.client.Request(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var resumed []int
	for _, s := range info.Timeline {
		if s.Name == supervisor.SpanRun && s.Phase == "transformer" {
			resumed = append(resumed, s.ResumedFrom)
		}
	}
	if killed == "" || info.State != supervisor.StateDone || info.Attempts != 2 || len(resumed) != 2 || resumed[1] < 10 {
		t.Fatalf("killed %q; %s (%s) after %d attempts, the transformer runs resumed at %v; want done in 2, the second at step 10 or later",
			killed, info.State, info.Reason, info.Attempts, resumed)
	}
	got, err := os.ReadFile(info.Artifact)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := exec.Command(python, filepath.Join(moduleRoot, "examples", "t2v-tiny", "local.py"), "--param", "threads=1",
		filepath.Join(dir, "local"), id, fmt.Sprint(seed), fmt.Sprint(steps), prompt).Output()
	if err != nil {
		t.Fatalf("local.py: %v\n%s", err, stderrOf(err))
	}
	want, err := os.ReadFile(strings.TrimSpace(string(ref)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the GIF of the resumed request (%d bytes) differs from the uninterrupted one's (%d bytes)", len(got), len(want))
	}
	p.release(t)
}

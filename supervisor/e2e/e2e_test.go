package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/plugins/decoder"
	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

const pipeline = `
phase "encoder"     { plugin = "encoder" }
phase "transformer" {
  plugin    = "transformer"
  instances = 2
  policy    = "roundrobin"
}
phase "decoder"     { plugin = "decoder" }
`

// reference returns the artifact the three phases produce in one process.
func reference(t *testing.T, prompt string, seed int64, steps int) []byte {
	t.Helper()
	b, err := model.Reference(context.Background(), model.DefaultParams(), prompt, seed, steps)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestConcurrentRequests sends 20 requests at once through encoder ×1,
// transformer ×2, decoder ×1; every artifact must equal the reference byte
// for byte and both transformers must be used. Then release must leave
// nothing behind.
func TestConcurrentRequests(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, pipeline))

	const n = 20
	infos := p.submitAll(t, n, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: fmt.Sprintf("prompt %d", i), Seed: int64(i), Steps: 5}
	})
	used := map[string]int{}
	for i, info := range infos {
		got, err := os.ReadFile(info.Artifact)
		if err != nil {
			t.Fatal(err)
		}
		if want := reference(t, fmt.Sprintf("prompt %d", i), int64(i), 5); !bytes.Equal(got, want) {
			t.Fatalf("request %d: artifact %s (%d bytes) differs from the reference (%d bytes)", i, info.Artifact, len(got), len(want))
		}
		used[info.Instances["transformer"]]++
	}
	if used["transformer-0"] == 0 || used["transformer-1"] == 0 || used["transformer-0"]+used["transformer-1"] != n {
		t.Fatalf("transformer use %v: want both used, %d in all", used, n)
	}

	pids, runDir := settled(t, p, "after every request ended")
	if len(pids) != 4 {
		t.Fatalf("%d instances, want 4", len(pids))
	}
	if len(leftovers(t, runDir, pids)) == 0 {
		t.Logf("run dir %s", runDir)
	}

	p.release(t)
	for _, pid := range pids {
		if running(pid) {
			t.Errorf("plugin process %d still alive after release", pid)
		}
	}
	if left := leftovers(t, runDir, pids); len(left) > 0 {
		t.Errorf("left behind after release: %v", left)
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Errorf("run dir %s still exists after release (%v)", runDir, err)
	}
	if _, err := os.Stat(p.socket); !os.IsNotExist(err) {
		t.Errorf("control socket %s still exists after release (%v)", p.socket, err)
	}
}

// TestRemoveInFlight removes a request while its transformer computes: it
// ends failed with reason "removed", no room stays open, and the pipeline
// still serves the next request.
func TestRemoveInFlight(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, "params = { height = 64, width = 64 }\n"+pipeline))
	ctx := context.Background()
	id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "long", Seed: 1, Steps: 10000})
	if err != nil {
		t.Fatal(err)
	}
	waitComputing(t, p, id)
	out, errOut, code := cli(t, p.socket, "remove", id)
	if code != 0 || strings.TrimSpace(out) != id+" failed (removed)" {
		t.Fatalf("remove: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	info, err := p.client.Request(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != supervisor.StateFailed || info.Reason != supervisor.ReasonRemoved {
		t.Fatalf("after remove: state %s, reason %q", info.State, info.Reason)
	}
	st, err := p.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			if in.OpenRooms != 0 {
				t.Errorf("instance %s has %d open rooms after remove", in.ID, in.OpenRooms)
			}
		}
	}
	// Removing again changes nothing.
	out, _, code = cli(t, p.socket, "remove", id)
	if code != 0 || strings.TrimSpace(out) != id+" failed (removed)" {
		t.Fatalf("second remove: exit %d, stdout %q", code, out)
	}
	// The pipeline still works.
	out, errOut, code = cli(t, p.socket, "submit", "--prompt", "after", "--seed", "3", "--steps", "2", "--wait", "--json")
	if code != 0 {
		t.Fatalf("submit after remove: exit %d, stderr %q", code, errOut)
	}
	var res struct{ ID, State, Artifact, SHA256, Reason string }
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("submit --json output %q: %v", out, err)
	}
	if res.State != "done" || res.SHA256 == "" || filepath.Ext(res.Artifact) != ".gif" {
		t.Fatalf("submit after remove: %+v", res)
	}
	p.release(t)
}

// TestPipelineShapes runs pipelines of two and of four phases: a phase list
// is any ordered list, and each phase takes by name the tensors it needs.
func TestPipelineShapes(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		config string
		local  []sdk.Phase
	}{
		{"encoder and decoder", `
phase "encoder" { plugin = "encoder" }
phase "decoder" { plugin = "decoder" }
`, []sdk.Phase{encoder.New(), decoder.New()}},
		{"two transformers in a row", `
phase "encoder" { plugin = "encoder" }
phase "coarse"  { plugin = "transformer" }
phase "fine"    {
  plugin    = "transformer"
  instances = 2
}
phase "decoder" { plugin = "decoder" }
`, []sdk.Phase{encoder.New(), transformer.New(), transformer.New(), decoder.New()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			p := startSupervisor(t, dir, writeConfig(t, dir, tt.config))
			out, errOut, code := cli(t, p.socket, "submit", "--prompt", "shapes", "--seed", "11", "--steps", "4", "--wait", "--json")
			if code != 0 {
				t.Fatalf("submit: exit %d, stdout %q, stderr %q", code, out, errOut)
			}
			var res struct{ ID, State, Artifact, SHA256 string }
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("submit --json output %q: %v", out, err)
			}
			got, err := os.ReadFile(res.Artifact)
			if err != nil {
				t.Fatal(err)
			}
			want, err := sdk.RunLocal(ctx, sdk.Request{ID: "local", Prompt: "shapes", Seed: 11, Steps: 4, ArtifactDir: t.TempDir()}, tt.local...)
			if err != nil {
				t.Fatal(err)
			}
			wantBytes, err := os.ReadFile(want.Path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, wantBytes) || res.SHA256 != want.SHA256 {
				t.Fatalf("artifact %s (sha256 %s) differs from the in-process run (sha256 %s)", res.Artifact, res.SHA256, want.SHA256)
			}
			p.release(t)
		})
	}
}

// TestSignalReleases: SIGTERM releases the supervisor like `release` does:
// it exits 0 and leaves no process, socket file or run directory.
func TestSignalReleases(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, pipeline))
	st, err := p.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.waitExit(30 * time.Second); err != nil {
		t.Fatalf("supervisor after SIGTERM: %v", err)
	}
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			if running(in.PID) {
				t.Errorf("plugin %s (pid %d) alive after SIGTERM", in.ID, in.PID)
			}
		}
	}
	if _, err := os.Stat(st.RunDir); !os.IsNotExist(err) {
		t.Errorf("run dir %s still exists (%v)", st.RunDir, err)
	}
	if _, err := os.Stat(p.socket); !os.IsNotExist(err) {
		t.Errorf("control socket %s still exists (%v)", p.socket, err)
	}
	if !strings.Contains(p.log.String(), "signal received; releasing") {
		t.Errorf("the log does not say why it released:\n%s", p.log.String())
	}
}

// TestZMQHops puts each phase on a host of its own (all on loopback here):
// every hop goes over the zmq backend, and artifacts still match the
// reference byte for byte.
func TestZMQHops(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, `
peer_timeout = "5s"
phase "encoder" {
  plugin = "encoder"
  host   = "a"
}
phase "transformer" {
  plugin    = "transformer"
  instances = 2
  host      = "b"
}
phase "decoder" {
  plugin  = "decoder"
  host    = "c"
  address = "127.0.0.1"
}
`))
	infos := p.submitAll(t, 4, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: "over zmq", Seed: int64(i), Steps: 3}
	})
	for i, info := range infos {
		if len(info.Backends) != 2 || info.Backends[0] != "zmq" || info.Backends[1] != "zmq" {
			t.Fatalf("%s: hop backends %v, want zmq twice", info.ID, info.Backends)
		}
		got, err := os.ReadFile(info.Artifact)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, reference(t, "over zmq", int64(i), 3)) {
			t.Fatalf("%s: artifact differs from the reference", info.ID)
		}
	}
	p.release(t)
}

// TestCPUs: each plugin process runs on its phase's cpus, else on the
// host's share (config.CPUShare): PHASED_CPUS and GOMAXPROCS in its
// environment (GOMAXPROCS only when this test's environment does not
// set it, which then rules every process); the supervisor says its own
// share; and requests run.
func TestCPUs(t *testing.T) {
	dir := shortDir(t)
	src := strings.Replace(pipeline, `policy    = "roundrobin"`, `policy    = "roundrobin"
  cpus      = 3`, 1)
	cfg, err := config.Parse([]byte(src), "c.hcl")
	if err != nil {
		t.Fatal(err)
	}
	share := cfg.CPUShare(runtime.NumCPU())
	p := startSupervisor(t, dir, writeConfig(t, dir, src))
	_, userSet := os.LookupEnv("GOMAXPROCS")
	for id, want := range map[string]int{"encoder-0": share, "transformer-0": 3, "transformer-1": 3, "decoder-0": share} {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", instanceStatus(t, p, id).PID))
		if err != nil {
			t.Fatal(err)
		}
		vars := strings.Split(string(env), "\x00")
		if w := fmt.Sprintf("PHASED_CPUS=%d", want); !slices.Contains(vars, w) {
			t.Errorf("%s: no %s in its environment", id, w)
		}
		if w := fmt.Sprintf("GOMAXPROCS=%d", want); !userSet && !slices.Contains(vars, w) {
			t.Errorf("%s: no %s in its environment", id, w)
		}
	}
	if w := fmt.Sprintf("gomaxprocs=%d", share); !userSet && !strings.Contains(p.log.String(), w) {
		t.Errorf("the supervisor did not say it runs on %s:\n%s", w, p.log.String())
	}
	p.submitAll(t, 2, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: "on a share", Seed: int64(i), Steps: 1}
	})
	p.release(t)
}

// TestControlChannel: every phase process is started with its end of a
// control channel (descriptor 3, named by PHASED_CONTROL_FD), a unix
// socket, and requests complete with their calls on it.
func TestControlChannel(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, pipeline))
	for _, id := range []string{"encoder-0", "transformer-0", "transformer-1", "decoder-0"} {
		pid := instanceStatus(t, p, id).PID
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		if w := sdk.ControlChannelEnv + "=3"; !slices.Contains(strings.Split(string(env), "\x00"), w) {
			t.Errorf("%s: no %s in its environment", id, w)
		}
		if fd, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", pid)); err != nil || !strings.HasPrefix(fd, "socket:") {
			t.Errorf("%s: descriptor 3 is %q (%v), not a socket", id, fd, err)
		}
	}
	p.submitAll(t, 3, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: "over the channel", Seed: int64(i), Steps: 1}
	})
	p.release(t)
}

// TestMaxQueue: with max_inflight = 1 and max_queue = 2, a request
// submitted while two wait is refused at once — HTTP 429 with a
// Retry-After, the CLI exits non-zero with the reason — and nothing of it
// is kept; every request accepted ends done, and once the queue has
// drained a new one is accepted.
func TestMaxQueue(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, "max_inflight = 1\nmax_queue = 2\nparams = { height = 64, width = 64 }\n"+pipeline))
	ctx := context.Background()
	first, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "first", Seed: 1, Steps: 2000})
	if err != nil {
		t.Fatal(err)
	}
	waitComputing(t, p, first) // dispatched: out of the queue
	accepted := []string{first}
	for i := range 2 {
		id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "queued", Seed: int64(2 + i), Steps: 1})
		if err != nil {
			t.Fatalf("request %d of max_queue = 2: %v", i+1, err)
		}
		accepted = append(accepted, id)
	}
	_, err = p.client.Submit(ctx, supervisor.Submission{Prompt: "one too many", Seed: 9, Steps: 1})
	var ae *supervisor.APIError
	if !errors.As(err, &ae) || ae.Code != http.StatusTooManyRequests || !errors.Is(err, supervisor.ErrQueueFull) || ae.RetryAfter < time.Second ||
		!strings.Contains(err.Error(), "2 requests wait for a dispatch slot (max_queue = 2)") {
		t.Fatalf("submit with the queue full: %v (%+v), want a 429 with a Retry-After and the reason", err, ae)
	}
	_, errOut, code := cli(t, p.socket, "submit", "--prompt", "one too many", "--seed", "10", "--steps", "1")
	if code == 0 || !strings.Contains(errOut, "the queue is full") || !strings.Contains(errOut, "submit it again in") {
		t.Fatalf("supervisor submit with the queue full: exit %d, stderr %q", code, errOut)
	}
	if n, ok := sample(scrape(t, p), "phased_requests_refused_total"); !ok || n != 2 {
		t.Errorf("phased_requests_refused_total %v (present %v), want 2", n, ok)
	}
	st, err := p.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Total != len(accepted) {
		t.Fatalf("%d requests known, want the %d accepted: a refused one was kept", st.Total, len(accepted))
	}
	for _, id := range accepted {
		info, err := p.client.Watch(ctx, id, nil)
		if err != nil || info.State != supervisor.StateDone {
			t.Fatalf("%s: %+v, %v", id, info.State, err)
		}
	}
	if _, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "after", Seed: 11, Steps: 1}); err != nil {
		t.Fatalf("submit once the queue drained: %v", err)
	}
	p.release(t)
}

// TestDeadlinesAndPriorities: with one dispatch slot held, queued
// requests wait in priority order, then deadline order, each with an
// estimated start; one whose deadline passes while queued fails
// "deadline exceeded" without a dispatch, one whose deadline (the
// config's default_deadline) passes while it runs fails so too with its
// rooms removed, and the others run in queue order.
func TestDeadlinesAndPriorities(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, "max_inflight = 1\ndefault_deadline = \"8s\"\nparams = { height = 128, width = 128 }\n"+pipeline))
	ctx := context.Background()
	submit := func(prompt string, steps, priority int, deadline time.Duration) string {
		t.Helper()
		id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: prompt, Seed: 1, Steps: steps, Priority: priority, Deadline: supervisor.Duration(deadline)})
		if err != nil {
			t.Fatalf("submit %s: %v", prompt, err)
		}
		return id
	}
	// One request served first: the queue then knows how long a slot is held.
	if info, err := p.client.Watch(ctx, submit("warm", 1, 0, time.Minute), nil); err != nil || info.State != supervisor.StateDone {
		t.Fatalf("warm-up: %+v, %v", info, err)
	}
	blocker := submit("blocker", supervisor.MaxSteps, 0, 0) // 10000 steps of 128×128: far longer than 8 s
	waitComputing(t, p, blocker)
	a := submit("a", 1, 0, 10*time.Minute)
	b := submit("b", 1, 90, 10*time.Minute)
	c := submit("c", 1, 0, 5*time.Minute)
	d := submit("d", 1, 0, 3*time.Second)
	var last time.Time
	for i, id := range []string{b, d, c, a} {
		info, err := p.client.Request(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if info.State != supervisor.StateQueued || info.QueuePosition != i+1 || info.EstimatedStart == nil || info.EstimatedStart.Before(last) {
			t.Fatalf("%s (priority %d, deadline %v): %s at %d, estimated start %v; want queued at %d, no earlier than %v",
				info.Prompt, info.Priority, info.Deadline, info.State, info.QueuePosition, info.EstimatedStart, i+1, last)
		}
		last = *info.EstimatedStart
	}
	out, errOut, code := cli(t, p.socket, "status", b)
	if code != 0 || !strings.Contains(out, "priority 90") || !strings.Contains(out, "position 1, estimated start ") {
		t.Fatalf("status %s: exit %d, stdout %q, stderr %q", b, code, out, errOut)
	}
	deadlined := func(id, where string) supervisor.RequestInfo {
		t.Helper()
		info, err := p.client.Watch(ctx, id, nil)
		if err != nil || info.State != supervisor.StateFailed || !strings.HasPrefix(info.Reason, "deadline exceeded: ") || !strings.Contains(info.Reason, where) {
			t.Fatalf("%s: %s %q (%v); want failed, deadline exceeded %s", info.Prompt, info.State, info.Reason, err, where)
		}
		return info
	}
	if info := deadlined(d, "not done 3s after its submission (it was still queued)"); info.Attempts != 0 {
		t.Errorf("a request whose deadline passed while queued was dispatched %d times", info.Attempts)
	}
	info := deadlined(blocker, "not done 8s after its submission (it was running)")
	removed := false
	for _, sp := range info.Timeline {
		removed = removed || sp.Name == supervisor.SpanRemove && sp.End != nil
	}
	if !removed {
		t.Errorf("the blocker's timeline has no ended remove span: %+v", info.Timeline)
	}
	var ends []time.Time
	for _, id := range []string{b, c, a} {
		info, err := p.client.Watch(ctx, id, nil)
		if err != nil || info.State != supervisor.StateDone {
			t.Fatalf("%s: %s %q, %v", info.Prompt, info.State, info.Reason, err)
		}
		ends = append(ends, *info.Finished)
	}
	if !ends[0].Before(ends[1]) || !ends[1].Before(ends[2]) {
		t.Errorf("b, c, a ended at %v: not in queue order", ends)
	}
	settled(t, p, "after the deadlines")
	p.release(t)
}

// TestMaxInflight: with max_inflight = 1, a second request waits queued
// while the first runs, and both end done.
func TestMaxInflight(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, "max_inflight = 1\nparams = { height = 64, width = 64 }\n"+pipeline))
	ctx := context.Background()
	first, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "first", Seed: 1, Steps: 2000})
	if err != nil {
		t.Fatal(err)
	}
	second, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "second", Seed: 2, Steps: 1})
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.client.Request(ctx, second)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != supervisor.StateQueued {
		t.Fatalf("second request is %s while the first runs, want queued", info.State)
	}
	for _, id := range []string{first, second} {
		info, err := p.client.Watch(ctx, id, nil)
		if err != nil || info.State != supervisor.StateDone {
			t.Fatalf("%s: %+v, %v", id, info.State, err)
		}
	}
	a, _ := p.client.Request(ctx, first)
	b, _ := p.client.Request(ctx, second)
	if !b.Finished.After(*a.Finished) {
		t.Fatalf("the queued request finished at %v, before the first at %v", b.Finished, a.Finished)
	}
	p.release(t)
}

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

// flakyPipeline is the pipeline with the flaky transformer (testdata/flaky)
// in two instances, restarted quickly.
func flakyPipeline(t *testing.T, dir, restart string) string {
	markers := filepath.Join(dir, "markers")
	if err := os.MkdirAll(markers, 0o700); err != nil {
		t.Fatal(err)
	}
	return `
phase "encoder" { plugin = "encoder" }
phase "transformer" {
  plugin    = "flaky"
  instances = 2
  params    = { marker_dir = "` + markers + `" }
  ` + restart + `
}
phase "decoder" { plugin = "decoder" }
`
}

// instanceStatus returns one instance's status.
func instanceStatus(t *testing.T, p *proc, id string) supervisor.InstanceStatus {
	t.Helper()
	st, err := p.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			if in.ID == id {
				return in
			}
		}
	}
	t.Fatalf("no instance %s in status", id)
	return supervisor.InstanceStatus{}
}

// watchDone waits for a request and fails the test unless it is done with
// the reference artifact.
func watchDone(t *testing.T, p *proc, id, prompt string, seed int64, steps int) supervisor.RequestInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info, err := p.client.Watch(ctx, id, nil)
	if err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	if info.State != supervisor.StateDone {
		t.Fatalf("%s: state %s, reason %q; want done", id, info.State, info.Reason)
	}
	got, err := os.ReadFile(info.Artifact)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, reference(t, prompt, seed, steps)) {
		t.Fatalf("%s: artifact %s differs from the reference", id, info.Artifact)
	}
	return info
}

// TestInstanceCrash: an instance that exits in the middle of a request is
// seen at once; the request fails that attempt with a reason naming the
// instance and its exit status, is dispatched again with new rooms, and
// still produces the reference artifact; the instance is restarted.
func TestInstanceCrash(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, flakyPipeline(t, dir, `restart { backoff = "50ms" }`)))
	ctx := context.Background()
	before, err := p.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "crash: waves", Seed: 7, Steps: 3})
	if err != nil {
		t.Fatal(err)
	}
	info := watchDone(t, p, id, "crash: waves", 7, 3)
	if info.Attempts != 2 {
		t.Errorf("attempts = %d, want 2", info.Attempts)
	}
	full, retry := lastEvent(t, p, id, "retry")
	if !strings.Contains(retry, "attempt 2 (retry 1 of 2)") || !strings.Contains(retry, "instance transformer-") || !strings.Contains(retry, "exited: exit status 3") {
		t.Errorf("retry event %q; want the attempt, the instance and its exit status", retry)
	}
	// Each attempt had rooms of its own: its rooms span names them. (Its
	// "rooms open" event may not come: a phase runs as soon as its own
	// rooms are open, and the crash may cancel the attempt before the
	// last one is.)
	var opened []string
	for _, sp := range full.Timeline {
		if sp.Name == supervisor.SpanRooms {
			opened = append(opened, sp.Detail)
		}
	}
	now := make([]string, len(full.Rooms))
	for i, room := range full.Rooms {
		now[i] = fmt.Sprintf("%d shm", room)
	}
	if len(opened) != 2 || opened[0] == opened[1] || opened[1] != strings.Join(now, ", ") {
		t.Errorf("rooms per attempt %q, rooms now %v; want two attempts with new room ids", opened, full.Rooms)
	}
	// The instance that crashed is restarted and ready again.
	crashed := ""
	for _, ph := range before.Phases {
		for _, in := range ph.Instances {
			if strings.Contains(retry, "instance "+in.ID+" (pid ") {
				crashed = in.ID
				if !eventually(10*time.Second, func() bool { return !running(in.PID) }) {
					t.Errorf("crashed instance %s (pid %d) still runs", in.ID, in.PID)
				}
				if l := leftovers(t, "/nonexistent", []int{in.PID}); len(l) > 0 {
					t.Errorf("the crashed instance left %v", l)
				}
			}
		}
	}
	if crashed == "" {
		t.Fatalf("retry event %q names no instance of the pipeline", retry)
	}
	if !eventually(10*time.Second, func() bool { return instanceStatus(t, p, crashed).State == "ready" }) {
		t.Fatalf("instance %s not ready again: %+v", crashed, instanceStatus(t, p, crashed))
	}
	is := instanceStatus(t, p, crashed)
	if is.Restarts != 1 || !strings.Contains(is.LastExit, "exit status 3") {
		t.Errorf("instance %s: restarts %d, last exit %q; want 1 and exit status 3", crashed, is.Restarts, is.LastExit)
	}
	// The restarted instance serves requests.
	p.submitAll(t, 4, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: "after", Seed: int64(i), Steps: 2}
	})
	p.release(t)
}

// TestKilledNotCounted: with retries = 0, a request whose transformer is
// killed from outside (SIGKILL) while it computes is dispatched again all
// the same, the retry saying it was not counted, and ends done.
func TestKilledNotCounted(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, "retries = 0\n"+flakyPipeline(t, dir, `restart { backoff = "50ms" }`)))
	id, err := p.client.Submit(context.Background(), supervisor.Submission{Prompt: "slow: killed", Seed: 8, Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	waitComputing(t, p, id)
	info, err := p.client.Request(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	in := instanceStatus(t, p, info.Instances["transformer"])
	if err := syscall.Kill(in.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	info = watchDone(t, p, id, "slow: killed", 8, 2)
	_, retry := lastEvent(t, p, id, "retry")
	if info.Attempts != 2 || !strings.Contains(retry, "attempt 2 (not counted against retries: the instance was stopped from outside)") ||
		!strings.Contains(retry, fmt.Sprintf("instance %s (pid %d) exited: signal: killed", in.ID, in.PID)) {
		t.Errorf("attempts %d, retry %q; want 2 attempts, the second not counted, after %s's kill", info.Attempts, retry, in.ID)
	}
	p.release(t)
}

// TestPoison: a request that crashes every instance it reaches is failed
// as poison once it has crashed poison_crashes (2) distinct ones, within
// its retries, naming them; the instances come back and serve the next.
func TestPoison(t *testing.T) {
	dir := shortDir(t)
	// A backoff of 2 s: the retry cannot go back to the instance just
	// crashed, and so crashes the other one.
	p := startSupervisor(t, dir, writeConfig(t, dir, flakyPipeline(t, dir, `restart { backoff = "2s" }`)))
	id, err := p.client.Submit(context.Background(), supervisor.Submission{Prompt: "poison: x", Seed: 9, Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.client.Watch(context.Background(), id, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`^poison: its attempts crashed 2 distinct instances, transformer-[01] \(exit status 3\), transformer-[01] \(exit status 3\) \(poison_crashes = 2\); it is not dispatched again`)
	if info.State != supervisor.StateFailed || info.Attempts != 2 || !want.MatchString(info.Reason) || strings.Count(info.Reason, "transformer-0") != 1 {
		t.Fatalf("poison request: %s after %d attempts, reason %q; want failed as poison after 2", info.State, info.Attempts, info.Reason)
	}
	if !eventually(20*time.Second, func() bool {
		return instanceStatus(t, p, "transformer-0").State == "ready" && instanceStatus(t, p, "transformer-1").State == "ready"
	}) {
		t.Fatal("the crashed transformers are not ready again")
	}
	p.submitAll(t, 2, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: "after", Seed: int64(i), Steps: 2}
	})
	p.release(t)
}

// TestInstanceGivesUp: past its restarts within the window an instance is
// failed, shown so in status, and a phase with no instance left fails new
// requests with a reason that says so.
func TestInstanceGivesUp(t *testing.T) {
	dir := shortDir(t)
	cfg := strings.Replace(flakyPipeline(t, dir, `restart {
    max     = 1
    window  = "1m"
    backoff = "50ms"
  }`), "instances = 2", "instances = 1", 1)
	p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
	kill := func(during func()) {
		t.Helper()
		pid := instanceStatus(t, p, "transformer-0").PID
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		during()
		if !eventually(20*time.Second, func() bool {
			is := instanceStatus(t, p, "transformer-0")
			return is.PID != pid || is.State == "failed"
		}) {
			t.Fatalf("transformer-0 (pid %d) not handled after kill -9", pid)
		}
	}
	// A request submitted while the only transformer dies waits for its
	// restart (or is dispatched again after it) and completes.
	var during string
	kill(func() {
		var err error
		if during, err = p.client.Submit(context.Background(), supervisor.Submission{Prompt: "during", Seed: 5, Steps: 2}); err != nil {
			t.Fatal(err)
		}
	})
	watchDone(t, p, during, "during", 5, 2)
	if !eventually(10*time.Second, func() bool { return instanceStatus(t, p, "transformer-0").State == "ready" }) {
		t.Fatalf("not restarted: %+v", instanceStatus(t, p, "transformer-0"))
	}
	kill(func() {})
	if !eventually(5*time.Second, func() bool { return instanceStatus(t, p, "transformer-0").State == "failed" }) {
		t.Fatalf("not failed after a second kill within the window: %+v", instanceStatus(t, p, "transformer-0"))
	}
	is := instanceStatus(t, p, "transformer-0")
	if is.Restarts != 1 || !strings.Contains(is.LastExit, "signal: killed") {
		t.Errorf("restarts %d, last exit %q; want 1 and signal: killed", is.Restarts, is.LastExit)
	}
	out, _, code := cli(t, p.socket, "status")
	if code != 0 || !regexpLine(out, `transformer\s+transformer-0\s+\d+\s+failed`) {
		t.Errorf("status (exit %d) does not show transformer-0 failed:\n%s", code, out)
	}
	id, err := p.client.Submit(context.Background(), supervisor.Submission{Prompt: "x", Steps: 1})
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.client.Watch(context.Background(), id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != supervisor.StateFailed || !strings.Contains(info.Reason, "phase transformer has no instance left: all 1 failed") {
		t.Errorf("request with no transformer left: %s %q", info.State, info.Reason)
	}
	p.release(t)
}

// TestSupervisorRestart: after kill -9 of the supervisor its plugins are
// gone within 2 s; a new supervisor on the same state directory answers for
// every accepted request, finishes the one that was running, and the ended
// one stays ended; a request's priority and deadline survive the restart,
// and one whose deadline passed meanwhile fails "deadline exceeded".
func TestSupervisorRestart(t *testing.T) {
	dir := shortDir(t)
	cfgPath := writeConfig(t, dir, flakyPipeline(t, dir, ""))
	p := startSupervisor(t, dir, cfgPath)
	ctx := context.Background()
	doneID, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "before", Seed: 1, Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	before := watchDone(t, p, doneID, "before", 1, 2)
	slowID, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "slow: across", Seed: 2, Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool {
		info, err := p.client.Request(ctx, slowID)
		return err == nil && info.State == supervisor.StateRunning
	}) {
		t.Fatal("the slow request is not running")
	}
	doomedID, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "slow: doomed", Seed: 3, Steps: 2, Deadline: supervisor.Duration(3 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	keptID, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "slow: kept", Seed: 4, Steps: 2, Priority: 80, Deadline: supervisor.Duration(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	doomed, err := p.client.Request(ctx, doomedID)
	if err != nil || doomed.Deadline == nil {
		t.Fatalf("%+v, %v: no deadline", doomed, err)
	}
	kept, err := p.client.Request(ctx, keptID)
	if err != nil || kept.Deadline == nil {
		t.Fatalf("%+v, %v: no deadline", kept, err)
	}
	pids := instancePIDs(t, p)
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.waitExit(10 * time.Second)
	if !eventually(2*time.Second, func() bool {
		for _, pid := range pids {
			if running(pid) {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("plugins %v outlived the supervisor by more than 2s", pids)
	}
	time.Sleep(time.Until(*doomed.Deadline)) // it passes while no supervisor runs

	p2 := startSupervisor(t, dir, cfgPath)
	// Status of both requests, through the CLI, with a state field.
	out, errOut, code := cli(t, p2.socket, "status", "--json", doneID)
	var got supervisor.RequestInfo
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.State != supervisor.StateDone || got.SHA256 != before.SHA256 {
		t.Errorf("status --json %s after restart: exit %d, %s %s", doneID, code, out, errOut)
	}
	watchDone(t, p2, slowID, "slow: across", 2, 2)
	after := watchDone(t, p2, keptID, "slow: kept", 4, 2)
	if after.Priority != 80 || !after.Deadline.Equal(*kept.Deadline) {
		t.Errorf("after the restart: priority %d, deadline %v; want 80, %v", after.Priority, after.Deadline, kept.Deadline)
	}
	if info, err := p2.client.Watch(ctx, doomedID, nil); err != nil || info.State != supervisor.StateFailed ||
		!strings.HasPrefix(info.Reason, "deadline exceeded: not done 3s after its submission (it was still queued)") {
		t.Errorf("a request whose deadline passed while no supervisor ran: %s %q, %v", info.State, info.Reason, err)
	}
	// Request ids go on from the journal.
	id, err := p2.client.Submit(ctx, supervisor.Submission{Prompt: "after", Steps: 1})
	if err != nil {
		t.Fatal(err)
	}
	if id <= slowID {
		t.Errorf("new request id %s after %s: ids must not be reused", id, slowID)
	}
	watchDone(t, p2, id, "after", 0, 1)
	p2.release(t)
	if l := leftovers(t, dir, pids); len(l) > 0 {
		t.Errorf("left behind after restart and release: %v", l)
	}
}

// TestStateDirLocked: a second supervisor on a state directory in use is
// refused, naming the directory, before it starts any plugin.
func TestStateDirLocked(t *testing.T) {
	dir := shortDir(t)
	cfgPath := writeConfig(t, dir, pipeline)
	p := startSupervisor(t, dir, cfgPath)
	cmd := exec.Command(supervisorBin, "start", "--socket", filepath.Join(dir, "other.sock"), "--state-dir", filepath.Join(dir, "state"), "--config", cfgPath)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "state directory is in use by another supervisor") ||
		!strings.Contains(string(out), filepath.Join(dir, "state", "journal.db")) {
		t.Errorf("second start on the same state dir: %v, output %q", err, out)
	}
	p.release(t)
}

// lastEvent returns a request with its events and the detail of its last
// event named what ("" if none).
func lastEvent(t *testing.T, p *proc, id, what string) (supervisor.RequestInfo, string) {
	t.Helper()
	info, err := p.client.Request(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var detail string
	for _, e := range info.Events {
		if e.What == what {
			detail = e.Detail
		}
	}
	return info, detail
}

// regexpLine reports whether some line of out matches expr.
func regexpLine(out, expr string) bool {
	re := regexp.MustCompile(expr)
	for _, line := range strings.Split(out, "\n") {
		if re.MatchString(line) {
			return true
		}
	}
	return false
}

// TestHangKilled: an instance that computes and reports no progress within
// the phase's hang_timeout is killed as a process group and handled as a
// crash; the request is dispatched again and produces the reference.
func TestHangKilled(t *testing.T) {
	dir := shortDir(t)
	cfg := strings.Replace(flakyPipeline(t, dir, `restart { backoff = "50ms" }`), `plugin    = "flaky"`, `plugin    = "flaky"
  hang_timeout = "3s"`, 1)
	p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
	ctx := context.Background()
	id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "hang: still", Seed: 3, Steps: 4})
	if err != nil {
		t.Fatal(err)
	}
	info := watchDone(t, p, id, "hang: still", 3, 4)
	_, retry := lastEvent(t, p, id, "retry")
	want := "was killed as hung: no progress for 3s on request " + id + " (computing, 0 of 1 done)"
	if info.Attempts != 2 || !strings.Contains(retry, want) {
		t.Errorf("attempts %d, retry %q; want 2 and %q", info.Attempts, retry, want)
	}
	st, err := p.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.InstanceExits < 1 || st.Retried < 1 {
		t.Errorf("status counts: instance exits %d, retried %d; want at least 1 each", st.InstanceExits, st.Retried)
	}
	p.release(t)
}

// TestReadiness: an instance takes requests only once its readiness call
// says it has loaded; a load slower than ready_timeout, or one that fails,
// refuses the start with the instance and the reason.
func TestReadiness(t *testing.T) {
	dir := shortDir(t)
	withParams := func(params, extra string) string {
		return strings.Replace(strings.Replace(flakyPipeline(t, dir, extra), "instances = 2", "instances = 1", 1),
			`params    = { marker_dir = "`, `params    = { `+params+`, marker_dir = "`, 1)
	}
	out := startFails(t, dir, "--config", writeConfig(t, dir, withParams(`load = "10s"`, `ready_timeout = "1s"`)))
	for _, want := range []string{"instance transformer-0: not ready within ready_timeout 1s"} {
		if !strings.Contains(out, want) {
			t.Errorf("slow load: output does not say %q:\n%s", want, out)
		}
	}
	out = startFails(t, dir, "--config", writeConfig(t, dir, withParams(`load_error = "weights file /models/wan.safetensors is truncated"`, "")))
	for _, want := range []string{"instance transformer-0: ready:", "loading: weights file /models/wan.safetensors is truncated"} {
		if !strings.Contains(out, want) {
			t.Errorf("failed load: output does not say %q:\n%s", want, out)
		}
	}
	// A load within the timeout: the first request finds it ready.
	p := startSupervisor(t, dir, writeConfig(t, dir, withParams(`load = "1s"`, `ready_timeout = "30s"`)))
	if is := instanceStatus(t, p, "transformer-0"); is.State != "ready" {
		t.Errorf("after start: transformer-0 is %s, want ready", is.State)
	}
	id, err := p.client.Submit(context.Background(), supervisor.Submission{Prompt: "loaded", Seed: 1, Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	watchDone(t, p, id, "loaded", 1, 2)
	p.release(t)
}

// TestCrashChildHoldsPipes: a plugin whose own child holds its stderr is
// killed; the group is killed with it, so the crash is seen (go-plugin
// reaps a plugin only once its pipes close) and the instance restarts.
func TestCrashChildHoldsPipes(t *testing.T) {
	dir := shortDir(t)
	cfg := strings.Replace(forkerPipeline(dir, `, inherit = "true"`), `  params = {`, `  restart {
    backoff = "50ms"
  }
  params = {`, 1)
	p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
	gc := grandchild(t, dir)
	pid := instanceStatus(t, p, "encoder-0").PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !eventually(2*time.Second, func() bool { return !running(gc) }) {
		t.Errorf("the plugin's child %d outlived it by 2s", gc)
	}
	if !eventually(10*time.Second, func() bool {
		is := instanceStatus(t, p, "encoder-0")
		return is.State == "ready" && is.PID != pid
	}) {
		t.Fatalf("encoder-0 not restarted after kill -9: %+v", instanceStatus(t, p, "encoder-0"))
	}
	p.submitAll(t, 2, func(i int) supervisor.Submission { return supervisor.Submission{Prompt: "p", Seed: int64(i), Steps: 1} })
	p.release(t)
}

// TestFrozenReceiver: a decoder stopped (SIGSTOP) after its rooms opened
// is watched once the transformer has delivered its inputs: it reports no
// progress within its hang_timeout, is killed as hung, and the request is
// dispatched again and ends with the reference artifact.
func TestFrozenReceiver(t *testing.T) {
	dir := shortDir(t)
	cfg := strings.Replace(strings.Replace(flakyPipeline(t, dir, `restart { backoff = "50ms" }`), "instances = 2", "instances = 1", 1),
		`phase "decoder" { plugin = "decoder" }`, `phase "decoder" {
  plugin       = "decoder"
  hang_timeout = "2s"
  restart { backoff = "50ms" }
}`, 1)
	p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
	ctx := context.Background()
	decoder := instanceStatus(t, p, "decoder-0").PID
	// "slow:" makes the transformer take 2 s: time to stop the decoder
	// after the rooms are open, before the inputs come.
	id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "slow: frozen", Seed: 5, Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !eventually(30*time.Second, func() bool { _, d := lastEvent(t, p, id, "rooms open"); return d != "" }) {
		t.Fatal("the rooms did not open")
	}
	if err := syscall.Kill(decoder, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(decoder, syscall.SIGKILL)
	info := watchDone(t, p, id, "slow: frozen", 5, 2)
	_, retry := lastEvent(t, p, id, "retry")
	want := "instance decoder-0 (pid " + strconv.Itoa(decoder) + ") was killed as hung: no progress for 2s on request " + id + " (its inputs were delivered)"
	if info.Attempts != 2 || !strings.Contains(retry, want) {
		t.Fatalf("attempts %d, retry %q; want 2 and %q", info.Attempts, retry, want)
	}
	if running(decoder) {
		t.Fatalf("the frozen decoder %d still runs", decoder)
	}
	p.release(t)
}

// TestFrozenOpen: a receiver frozen while idle (its side for the next
// request stands by, opened before) is killed as hung when the request's
// open of its room (the arming of that side) outlasts its own
// hang_timeout, saying so, not its upstream, whose Send waits for the
// descriptor; the request is dispatched again and completes.
func TestFrozenOpen(t *testing.T) {
	dir := shortDir(t)
	cfg := strings.Replace(pipeline, `phase "decoder"     { plugin = "decoder" }`, `phase "decoder" {
  plugin       = "decoder"
  hang_timeout = "2s"
  restart { backoff = "50ms" }
}`, 1)
	if cfg == pipeline {
		t.Fatal("the pipeline's decoder block changed: update this test")
	}
	p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
	ctx := context.Background()
	decoder := instanceStatus(t, p, "decoder-0").PID
	if err := syscall.Kill(decoder, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(decoder, syscall.SIGKILL)
	id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "frozen open", Seed: 6, Steps: 1})
	if err != nil {
		t.Fatal(err)
	}
	info := watchDone(t, p, id, "frozen open", 6, 1)
	_, retry := lastEvent(t, p, id, "retry")
	want := "instance decoder-0 (pid " + strconv.Itoa(decoder) + ") was killed as hung: opening room "
	if info.Attempts != 2 || !strings.Contains(retry, want) || !strings.Contains(retry, " took longer than hang_timeout 2s") {
		t.Fatalf("attempts %d, retry %q; want 2 and %q...", info.Attempts, retry, want)
	}
	p.release(t)
}

// TestReleaseFrozen: release completes within its bound and exits 0 when
// an instance does not answer (it is stopped): that instance is killed.
func TestReleaseFrozen(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, pipeline))
	decoder := instanceStatus(t, p, "decoder-0").PID
	if err := syscall.Kill(decoder, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(decoder, syscall.SIGKILL)
	p.release(t)
	if !eventually(10*time.Second, func() bool { return !running(decoder) }) {
		t.Fatalf("the stopped decoder %d outlived release", decoder)
	}
	if !strings.Contains(p.log.String(), "instance did not release; killing it") {
		t.Fatalf("release did not say it killed the stopped instance:\n%s", p.log.String())
	}
}

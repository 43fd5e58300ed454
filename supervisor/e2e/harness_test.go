package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/internal/netns"
	"github.com/phased/phased/supervisor"
)

// proc is a supervisor started with `supervisor start` as a real process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	socket string
	client *supervisor.Client
	log    *syncBuffer
	exited chan struct{}
	err    error // the process's exit error, after exited
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// shortDir returns a new directory under /tmp with a short path (unix
// socket paths are limited to 107 bytes), removed after the test.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pe2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// writeConfig writes an HCL config into dir that uses the test plugins and
// writes artifacts into dir/out.
func writeConfig(t *testing.T, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "phased.hcl")
	src := "plugin_dir = \"" + pluginDir + "\"\nartifact_dir = \"" + filepath.Join(dir, "out") + "\"\n" + body
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startSupervisor runs `supervisor start --config cfg` and waits until its
// control socket is ready. The process is killed at the end of the test if
// it still runs.
func startSupervisor(t *testing.T, dir, cfg string) *proc {
	t.Helper()
	return startSupervisorIn(t, dir, cfg, nil)
}

// startSupervisorIn is startSupervisor on a test host (nil: this one).
func startSupervisorIn(t *testing.T, dir, cfg string, host *netns.Host) *proc {
	t.Helper()
	socket := filepath.Join(dir, "ctl", "phased.sock")
	args := []string{"start", "--config", cfg, "--socket", socket, "--state-dir", filepath.Join(dir, "state"), "--log-level", "debug"}
	cmd := exec.Command(supervisorBin, args...)
	if host != nil {
		cmd = host.Command(supervisorBin, args...)
	}
	// A test binary killed by go test's timeout takes its supervisors with
	// it: SIGTERM, so that they release their plugins.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	p := &proc{t: t, cmd: cmd, socket: socket, client: supervisor.NewClient(socket), log: &syncBuffer{}, exited: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			p.log.Write([]byte(line + "\n"))
			if strings.Contains(line, "control socket ready") {
				once.Do(func() { close(ready) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		// A plugin built with -race reports a race on its stderr, which
		// the supervisor logs.
		if strings.Contains(p.log.String(), "WARNING: DATA RACE") {
			t.Errorf("a data race was reported in the supervisor's log")
		}
		if t.Failed() {
			t.Logf("supervisor log:\n%s", p.log.String())
		}
	})
	select {
	case <-ready:
	case <-p.exited:
		t.Fatalf("supervisor exited during start: %v\n%s", p.err, p.log.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("supervisor not ready after 90s\n%s", p.log.String())
	}
	return p
}

// settled checks that every instance of p is ready with no room open
// (when, what just happened, is said in the errors) and returns their
// pids and the run directory.
func settled(t *testing.T, p *proc, when string) ([]int, string) {
	t.Helper()
	st, err := p.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			if in.OpenRooms != 0 || in.State != "ready" {
				t.Errorf("instance %s: state %s, %d open rooms %s", in.ID, in.State, in.OpenRooms, when)
			}
			pids = append(pids, in.PID)
		}
	}
	return pids, st.RunDir
}

// waitComputing waits until the encoder of request id has handed its
// tensors on: the transformer is computing.
func waitComputing(t *testing.T, p *proc, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	handed := false
	last, err := p.client.Watch(ctx, id, func(info supervisor.RequestInfo) {
		for _, e := range info.Events {
			if e.What == "phase done" && e.Phase == "encoder" {
				handed = true
				cancel()
			}
		}
	})
	if !handed {
		t.Fatalf("the encoder of %s never finished: %+v (%v)", id, last, err)
	}
}

// waitExit waits for the supervisor process to exit and returns its error.
func (p *proc) waitExit(d time.Duration) error {
	select {
	case <-p.exited:
		return p.err
	case <-time.After(d):
		return errors.New("supervisor still running")
	}
}

// submitAll submits n requests at once, sub(i) the i-th, waits for all of
// them and fails the test unless every one ended done.
func (p *proc) submitAll(t *testing.T, n int, sub func(i int) supervisor.Submission) []supervisor.RequestInfo {
	t.Helper()
	ctx := context.Background()
	infos := make([]supervisor.RequestInfo, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := p.client.Submit(ctx, sub(i))
			if err != nil {
				errs[i] = err
				return
			}
			infos[i], errs[i] = p.client.Watch(ctx, id, nil)
		}()
	}
	wg.Wait()
	for i, info := range infos {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if info.State != supervisor.StateDone {
			t.Fatalf("request %d (%s): state %s, reason %q", i, info.ID, info.State, info.Reason)
		}
	}
	return infos
}

// release runs `supervisor release` against p, which must print
// "released", and waits for the supervisor to exit 0.
func (p *proc) release(t *testing.T) {
	t.Helper()
	out, errOut, code := cli(t, p.socket, "release")
	if code != 0 || strings.TrimSpace(out) != "released" {
		t.Fatalf("release: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if err := p.waitExit(30 * time.Second); err != nil {
		t.Fatalf("supervisor exit after release: %v", err)
	}
}

// cli runs the supervisor binary as a client verb against p's socket and
// returns stdout, stderr and the exit code.
func cli(t *testing.T, socket string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, supervisorBin, args...)
	cmd.Env = append(os.Environ(), "PHASED_SOCKET="+socket)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("supervisor %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// stat returns the fields of /proc/PID/stat after the command name (which
// may hold spaces and parentheses): the state first. nil when there is no
// such process.
func stat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil || pid <= 0 {
		return nil
	}
	return strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
}

// running reports whether a process with this pid exists and is not a
// zombie: an orphan waits as a zombie until pid 1 reaps it, which in some
// containers never happens.
func running(pid int) bool {
	f := stat(pid)
	return len(f) > 0 && f[0] != "Z"
}

// startTime is a process's start time (field 22 of /proc/PID/stat), which
// tells it apart from a later process given the same pid; 0 when there is
// no such process.
func startTime(pid int) uint64 {
	f := stat(pid)
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// leftovers lists socket files under dir and shared-memory segments of the
// given plugin pids.
func leftovers(t *testing.T, dir string, pids []int) []string {
	t.Helper()
	var out []string
	_ = filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode()&os.ModeSocket != 0 {
			out = append(out, path)
		}
		return nil
	})
	entries, _ := os.ReadDir("/dev/shm")
	for _, e := range entries {
		for _, pid := range pids {
			if strings.HasPrefix(e.Name(), "phased-") && strings.Contains(e.Name(), "."+strconv.Itoa(pid)+"-") {
				out = append(out, filepath.Join("/dev/shm", e.Name()))
			}
		}
	}
	return out
}

// instancePIDs returns the pids of every instance of p, on every host.
func instancePIDs(t *testing.T, p *proc) []int {
	t.Helper()
	st, err := p.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			pids = append(pids, in.PID)
		}
	}
	return pids
}

// tlsCLI runs `supervisor tls ARGS...`, which must succeed.
func tlsCLI(t *testing.T, args ...string) {
	t.Helper()
	if out, errOut, code := cli(t, "", append([]string{"tls"}, args...)...); code != 0 {
		t.Fatalf("supervisor tls %v: exit %d: %s%s", args, code, out, errOut)
	}
}

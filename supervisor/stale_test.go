package supervisor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/sdk/transfer"
	"github.com/phased/phased/supervisor/config"
)

// deadPID returns the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func TestSegmentPID(t *testing.T) {
	for name, want := range map[string]int{
		"phased-transformer-1.4242-17-99":   4242,
		"phased-encoder-0.7-free-3":         7,
		"phased-t123-4-1-56":                0, // no '.': not a plugin's
		"other-transformer-1.4242-17-99":    0,
		"phased-transformer-1.x-17":         0,
		"phased-transformer-1.4242":         0,
		"phased-decoder-0.0-1-1":            0,
		"phased-hoprx.31337-free-12345678":  31337,
		"phased-transformer-1.4242-out-9":   4242, // an output segment
		"phased-transformer-1.4242-lends-0": 4242, // its lend table
		// Instance ids may hold '.' and '-' (the runtime allows
		// [A-Za-z0-9_.-]): the pid is after the last '.'.
		"phased-wan2.1-t2v-0.4242-17-99": 4242,
		"phased-a.1-x.5-free-3":          5,
		"phased-a.b.c.77-1-2":            77,
		"phased-a.1-x-17":                0, // no generation
		"phased-a.1-free-x":              0,
		"phased-a.1-free-free":           0,
		"phased-a.-1-2":                  0,
		"phased-a.+7-1-2":                0,
	} {
		got, ok := segmentPID(name)
		if want == 0 && ok || want != 0 && (!ok || got != want) {
			t.Errorf("segmentPID(%q) = %d, %t; want %d", name, got, ok, want)
		}
	}
}

// The sweep removes the run directories and segments of dead processes,
// and keeps those of live ones, what is not phased's, and what is in a
// configured run_dir but not a supervisor's.
func TestSweepStale(t *testing.T) {
	dead, live := deadPID(t), os.Getppid()
	mkRunIn := func(parent, prefix string, pid int, created bool) string {
		dir, err := os.MkdirTemp(parent, prefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.MkdirAll(filepath.Join(dir, "transformer-0"), 0o700); err != nil {
			t.Fatal(err)
		}
		content := strconv.Itoa(pid) + "\n"
		if created {
			content += createdMark + "\n"
		}
		if err := os.WriteFile(filepath.Join(dir, pidFile), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	mkRun := func(pid int, created bool) string { return mkRunIn(runParents[0], runDirPrefix, pid, created) }
	staleDir, liveDir := mkRun(dead, true), mkRun(live, true)
	legacyDir := mkRunIn("/tmp", "phased-", dead, true) // where earlier versions made it
	configured := mkRun(dead, false)                    // a run_dir named like ours too
	userFile := filepath.Join(configured, "notes.txt")
	if err := os.WriteFile(userFile, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}

	cfg := config.Default()
	cfg.RunDir = configured
	s := New(cfg, Options{})
	if err := s.sweepStale(); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{staleDir, legacyDir} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("the run directory %s of dead pid %d is still there (%v)", dir, dead, err)
		}
	}
	if _, err := os.Stat(filepath.Join(liveDir, pidFile)); err != nil {
		t.Errorf("the run directory of live pid %d was touched: %v", live, err)
	}
	if _, err := os.Stat(filepath.Join(configured, "transformer-0")); !os.IsNotExist(err) {
		t.Errorf("the configured run_dir keeps an instance directory of a dead supervisor (%v)", err)
	}
	if b, err := os.ReadFile(userFile); err != nil || string(b) != "mine" {
		t.Errorf("a file of the user's in run_dir was removed: %v", err)
	}

	shm := t.TempDir()
	for _, n := range []string{"phased-encoder-0." + strconv.Itoa(dead) + "-1-2", "phased-encoder-0." + strconv.Itoa(live) + "-1-2", "unrelated." + strconv.Itoa(dead) + "-1"} {
		if err := os.WriteFile(filepath.Join(shm, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A run directory beside the segments is not one.
	if err := os.Mkdir(filepath.Join(shm, runDirPrefix+strconv.Itoa(dead)), 0o700); err != nil {
		t.Fatal(err)
	}
	n, err := sweepDeadSegments(shm)
	if err != nil || n != 1 {
		t.Fatalf("sweepDeadSegments = %d, %v; want 1", n, err)
	}
	left, _ := os.ReadDir(shm)
	if len(left) != 3 {
		t.Fatalf("left: %v", left)
	}
}

// A run directory is made in memory when /dev/shm is there: every room
// binds socket files in it.
func TestNewRunDir(t *testing.T) {
	dir, err := newRunDir()
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	want := filepath.Join(os.TempDir(), runDirPrefix)
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		want = filepath.Join("/dev/shm", runDirPrefix)
	}
	if !strings.HasPrefix(dir, want) {
		t.Errorf("run dir %s, want one starting with %s", dir, want)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("run dir mode %v (%v), want 0700", fi.Mode(), err)
	}
}

// TestKillStaleGroups: what is left of a dead plugin's process group (the
// processes it started) is killed; a group whose leader runs is not.
func TestKillStaleGroups(t *testing.T) {
	dir := t.TempDir()
	// A leader that starts a child and exits: the child stays in its group.
	orphaned := exec.Command("sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!")
	orphaned.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := orphaned.Output()
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("child pid %q: %v", out, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
	// A live leader.
	live := exec.Command("sleep", "60")
	live.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Process.Kill(); _ = live.Wait() })
	for _, pid := range []int{orphaned.Process.Pid, live.Process.Pid} {
		if err := noteGroup(dir, pid); err != nil {
			t.Fatal(err)
		}
	}
	if n := killStaleGroups(dir); n != 1 {
		t.Errorf("killed %d groups, want 1", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for transfer.ProcessAlive(child) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if transfer.ProcessAlive(child) {
		t.Errorf("the orphaned child %d still runs", child)
	}
	if !transfer.ProcessAlive(live.Process.Pid) {
		t.Error("killed a group whose leader runs")
	}
}

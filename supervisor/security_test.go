package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/phased/phased/sdk/transfer"
	"github.com/phased/phased/supervisor/config"
)

// otherUser is the second local user of the cross-user tests, made once
// (useradd) by the first test that needs it and removed (userdel) when the
// tests end; with no useradd, an unused uid stands in for it (no account
// is needed to own files and run processes).
var otherUser struct {
	once sync.Once
	uid  int
	name string
}

// otherUID returns the second user's uid; the test is skipped when not
// run as root, which alone can act as another user.
func otherUID(t *testing.T) int {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root, to act as a second local user")
	}
	otherUser.once.Do(func() {
		otherUser.uid = 54321
		name := fmt.Sprintf("phasedt%d", os.Getpid()%100000)
		if out, err := exec.Command("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
			t.Logf("no second account (useradd: %v %s); uid %d stands in for it", err, bytes.TrimSpace(out), otherUser.uid)
			return
		}
		out, err := exec.Command("id", "-u", name).Output()
		if uid, perr := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && perr == nil {
			otherUser.uid, otherUser.name = uid, name
		}
	})
	return otherUser.uid
}

// TestMain removes the second user the tests made.
func TestMain(m *testing.M) {
	code := m.Run()
	if otherUser.name != "" {
		_ = exec.Command("userdel", otherUser.name).Run()
	}
	os.Exit(code)
}

// asOtherUser runs a shell command as the second user.
func asOtherUser(t *testing.T, script string) {
	t.Helper()
	uid := otherUID(t)
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as uid %d: %s: %v\n%s", uid, script, err, out)
	}
}

// sharedDir returns a directory like /tmp: everyone may create entries,
// only their owner may rename or remove them.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pshared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestSocketDirOfAnotherUser: another user who made the socket's
// directory first (as /tmp/phased-UID, sticky and open) could rename the
// socket away and bind a server of theirs in its place; the supervisor
// refuses such a directory, and one open to others, sticky or not.
func TestSocketDirOfAnotherUser(t *testing.T) {
	base := sharedDir(t)
	dir := filepath.Join(base, "phased-0")
	asOtherUser(t, "mkdir -m 1777 "+dir)
	sock := filepath.Join(dir, "phased.sock")
	if ln, err := Listen(sock); err == nil {
		ln.Close()
		t.Fatalf("Listen in %s, made by uid %d with mode 1777, succeeded", dir, otherUID(t))
	} else if !strings.Contains(err.Error(), fmt.Sprintf("belongs to uid %d, not to this user", otherUID(t))) {
		t.Fatalf("Listen in another user's directory: %v", err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("a socket file was made in another user's directory: %v", err)
	}
	// Ours, but sticky and open to others: refused too.
	mine := filepath.Join(base, "mine")
	if err := os.Mkdir(mine, 0o700); err != nil {
		t.Fatal(err)
	}
	for mode, want := range map[os.FileMode]string{
		0o1777: "is writable by other users",
		0o0750: "is open to other users (mode -rwxr-x---)",
	} {
		if err := syscall.Chmod(mine, uint32(mode)); err != nil { // os.Chmod drops the sticky bit of a raw mode
			t.Fatal(err)
		}
		if ln, err := Listen(filepath.Join(mine, "phased.sock")); err == nil {
			ln.Close()
			t.Fatalf("Listen in a directory of mode %04o succeeded", mode)
		} else if !strings.Contains(err.Error(), want) {
			t.Fatalf("Listen in a directory of mode %04o: %v, want %q", mode, err, want)
		}
	}
}

// TestRunDirOfAnotherUser: a run_dir that another user made and planted a
// symlink in is refused before anything is written there; the file the
// link points to is untouched.
func TestRunDirOfAnotherUser(t *testing.T) {
	base := sharedDir(t)
	victim := filepath.Join(base, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(base, "shared-run")
	asOtherUser(t, "mkdir -m 0777 "+run+" && ln -s "+victim+" "+filepath.Join(run, pidFile))
	cfg := config.Default()
	cfg.RunDir, cfg.PluginDir = run, t.TempDir()
	err := New(cfg, Options{}).Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("run_dir: directory %s belongs to uid %d", run, otherUID(t))) {
		t.Fatalf("Start with another user's run_dir: %v", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("the file behind the planted link now holds %q", b)
	}
}

// TestRunDirOpen: a run_dir of this user that others may write to is
// refused; a private one works, and a pid file in it is never written
// through a link.
func TestRunDirOpen(t *testing.T) {
	run := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(run, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(run, 0o777); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.RunDir, cfg.PluginDir = run, t.TempDir()
	err := New(cfg, Options{}).Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "run_dir: directory "+run+" is writable by other users") {
		t.Fatalf("Start with an open run_dir: %v", err)
	}
	if err := os.Chmod(run, 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "target")
	if err := os.Symlink(target, filepath.Join(run, pidFile)); err != nil {
		t.Fatal(err)
	}
	if err := writePIDFile(run, false); err == nil {
		t.Fatal("the pid file was written over a link")
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("the link's target was made: %v", err)
	}
}

// TestFailedStartKillsGroup: a plugin whose start fails — it prints a
// line that is no handshake, prints nothing, or prints garbage — is ended
// with its whole process group within a bound: a child that holds its
// output pipes (which kept start waiting for good) or that detached
// itself does not survive it.
func TestFailedStartKillsGroup(t *testing.T) {
	for name, body := range map[string]string{
		"a line, then waits":     "sleep 300 &\necho $! > PIDFILE\necho hello\nwait\n",
		"nothing, then waits":    "sleep 300 &\necho $! > PIDFILE\nwait\n",
		"garbage and a detached": "sleep 300 >/dev/null 2>&1 </dev/null &\necho $! > PIDFILE\necho '1|1|garbage'\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			pidFile := filepath.Join(dir, "child.pid")
			bin := filepath.Join(dir, "phased-phase-bad")
			script := "#!/bin/sh\n" + strings.ReplaceAll(body, "PIDFILE", pidFile)
			if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			sockets, err := os.MkdirTemp("/tmp", "pfail-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(sockets)
			ended := make(chan error, 1)
			go func() {
				_, err := startProcess(context.Background(), processConfig{
					Name: "bad-0", Path: bin, Kind: "phase", APIVersion: 1, SocketDir: sockets,
					StartTimeout: 2 * time.Second, Logger: hclog.NewNullLogger(), LogLevel: "info",
				})
				ended <- err
			}()
			select {
			case err := <-ended:
				if err == nil {
					t.Fatal("the start succeeded")
				}
			case <-time.After(time.Minute): // a hang, not a timing: the bound is seconds
				t.Fatal("the failed start did not return")
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			child, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if !eventuallyTrue(func() bool { return !transfer.ProcessAlive(child) }) {
				syscall.Kill(child, syscall.SIGKILL)
				t.Fatalf("the plugin's child %d outlived the failed start", child)
			}
		})
	}
}

// eventuallyTrue polls cond for up to five seconds.
func eventuallyTrue(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}
